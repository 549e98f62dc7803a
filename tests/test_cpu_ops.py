"""The fused Rust CPU ops of the bf16 model path (`rsllm.model.cpu_ops`) equal the torch
ops they replace, and reject bad input with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsllm import _core
from rsllm.errors import InvalidRequestError
from rsllm.model import cpu_ops
from rsllm.model.kv_layout import PAGED, TILED
from rsllm.model.layers import apply_rope


def bf16(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).bfloat16()


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_rms_norm_equals_torch(rows: int) -> None:
    x, w = bf16(rows, 576, seed=1), bf16(576, seed=2)
    out = cpu_ops.rms_norm(x, None, w, 1e-5)
    ref = F.rms_norm(x.float(), (576,), w.float(), 1e-5)
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=2**-7)


def test_rms_norm_with_residual_adds_in_place_first() -> None:
    x, res, w = bf16(9, 64, seed=3), bf16(9, 64, seed=4), bf16(64, seed=5)
    want_res = x + res  # torch's bf16 add: the same rounding as the kernel's
    out = cpu_ops.rms_norm(x, res, w, 1e-6)
    assert torch.equal(res, want_res)
    ref = F.rms_norm(want_res.float(), (64,), w.float(), 1e-6)
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=2**-7)


def test_rope_equals_torch_rope_and_split() -> None:
    t, hq, hkv, d = 5, 6, 2, 64
    qkv = bf16(t, (hq + 2 * hkv) * d, seed=6)
    angles = torch.rand(t, 1, d // 2, generator=torch.Generator().manual_seed(7)) * 6
    cos = torch.cat([angles.cos(), angles.cos()], -1).bfloat16()
    sin = torch.cat([-angles.sin(), angles.sin()], -1).bfloat16()
    q, k, v = cpu_ops.rope(qkv, cos, sin, hq, hkv)
    assert q.shape == (t, hq, d) and k.shape == v.shape == (t, hkv, d)
    # The torch path of LlamaAttention: rope on [q; k], v as it is.
    qk = apply_rope(qkv[:, : (hq + hkv) * d].view(t, hq + hkv, d).float(), cos.float(), sin.float())
    torch.testing.assert_close(q.float(), qk[:, :hq], atol=1e-2, rtol=2**-7)
    torch.testing.assert_close(k.float(), qk[:, hq:], atol=1e-2, rtol=2**-7)
    assert torch.equal(v, qkv[:, (hq + hkv) * d :].view(t, hkv, d))  # bit for bit


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv_equals_the_torch_tiled_store(dtype: torch.dtype) -> None:
    t, hkv, d = 7, 2, 64
    kv = torch.randn(t, 2, hkv, d, generator=torch.Generator().manual_seed(8)).to(dtype)
    slots = torch.tensor([17, 3, 40, 0, 9, 63, 16])
    k_shape, v_shape = TILED.shapes(4, 16, hkv, d)
    kc, vc = torch.zeros(k_shape, dtype=dtype), torch.zeros(v_shape, dtype=dtype)
    cpu_ops.store_kv(kv[:, 0].contiguous(), kv[:, 1].contiguous(), slots, kc, vc)
    ref_kc, ref_vc = torch.zeros_like(kc), torch.zeros_like(vc)
    TILED.store(kv[:, 0], kv[:, 1], ref_kc, ref_vc, slots)  # strided views: torch's path
    assert torch.equal(kc, ref_kc) and torch.equal(vc, ref_vc)
    # ... which is the paged store, rearranged.
    paged = [torch.zeros(PAGED.shapes(4, 16, hkv, d)[0], dtype=dtype) for _ in "kv"]
    PAGED.store(kv[:, 0], kv[:, 1], *paged, slots)
    blocks = torch.arange(4)
    assert torch.equal(TILED.gather(kc, blocks, values=False), paged[0])
    assert torch.equal(TILED.gather(vc, blocks, values=True), paged[1])


def test_store_kv_rejects_bad_slots_and_caches() -> None:
    k, v = bf16(1, 1, 64, seed=9), bf16(1, 1, 64, seed=10)
    k_shape, v_shape = TILED.shapes(2, 16, 1, 64)
    kc, vc = torch.zeros(k_shape).bfloat16(), torch.zeros(v_shape).bfloat16()
    for slot in (32, -1):
        with pytest.raises(InvalidRequestError, match="outside the cache"):
            cpu_ops.store_kv(k, v, torch.tensor([slot]), kc, vc)
    assert (kc == 0).all() and (vc == 0).all()  # checked before anything is written
    paged = torch.zeros(PAGED.shapes(2, 16, 1, 64)[0]).bfloat16()
    with pytest.raises(InvalidRequestError, match="must be tiled"):
        cpu_ops.store_kv(k, v, torch.tensor([3]), kc, paged)
    with pytest.raises(InvalidRequestError, match="tokens"):
        cpu_ops.store_kv(k, v, torch.tensor([3, 4]), kc, vc)


def test_rope_rejects_mismatched_shapes() -> None:
    qkv = bf16(2, 4 * 64, seed=10)
    cos = sin = bf16(2, 64, seed=11)
    q, k, v = torch.empty(2, 2, 64).bfloat16(), *(torch.empty(2, 1, 64).bfloat16() for _ in "kv")
    _core.rope(*map(cpu_ops.as_numpy, (qkv, cos, sin, q, k, v)), "bfloat16")
    with pytest.raises(InvalidRequestError, match="rope"):
        _core.rope(*map(cpu_ops.as_numpy, (qkv, cos[:1], sin, q, k, v)), "bfloat16")
    with pytest.raises(InvalidRequestError, match="v_out"):
        bad = torch.empty(2, 3, 64).bfloat16()
        _core.rope(*map(cpu_ops.as_numpy, (qkv, cos, sin, q, k, bad)), "bfloat16")


def test_rms_norm_rejects_mismatched_shapes() -> None:
    x = np.zeros((4, 8), np.float32)
    with pytest.raises(InvalidRequestError, match="weight"):
        _core.rms_norm(x, None, np.ones(7, np.float32), 1e-5, np.empty_like(x), "float32")
    with pytest.raises(InvalidRequestError, match="same shape"):
        _core.rms_norm(
            x,
            np.zeros((3, 8), np.float32),
            np.ones(8, np.float32),
            1e-5,
            np.empty_like(x),
            "float32",
        )
    with pytest.raises(InvalidRequestError, match="dtype"):
        _core.rms_norm(x, None, np.ones(8, np.float32), 1e-5, np.empty_like(x), "float16")


def test_float32_keeps_torch_ops() -> None:
    """fp32 stays on torch's ops, whose rounding matches transformers token for token."""
    x = torch.zeros(2, 8)
    assert not cpu_ops.fused_ops_supported(x)
    assert not cpu_ops.fused_rope_supported(x, x)
    assert cpu_ops.fused_ops_supported(x.bfloat16())


@pytest.mark.parametrize("bias", [False, True])
def test_linear_row_equals_torch(bias: bool) -> None:
    x, w = bf16(1, 576, seed=10), bf16(960, 576, seed=11)
    b = bf16(960, seed=12) if bias else None
    out = cpu_ops.linear_row(x, w, b)
    ref = F.linear(x.float(), w.float(), None if b is None else b.float())
    assert out.shape == (1, 960) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2**-7)


def test_linear_row_only_takes_one_bf16_row() -> None:
    w = bf16(8, 32, seed=13)
    assert cpu_ops.linear_row_supported(bf16(1, 32, seed=14), w)
    assert not cpu_ops.linear_row_supported(bf16(2, 32, seed=14), w)
    assert not cpu_ops.linear_row_supported(torch.zeros(1, 32), w.float())


def test_linear_row_rejects_a_weight_of_the_wrong_size() -> None:
    x = np.zeros((1, 32), np.uint16)
    with pytest.raises(InvalidRequestError, match="weight holds"):
        _core.linear_row(x, np.zeros((8, 31), np.uint16), None, np.zeros((1, 8), np.uint16))


def test_persistent_numpy_reuses_a_view_only_for_the_same_live_tensor() -> None:
    t = bf16(4, 8, seed=15)
    view = cpu_ops.persistent_numpy(t)
    assert cpu_ops.persistent_numpy(t) is view
    t[0, 0] = 3.0  # a view, not a copy: the kernels see in-place updates (KV cache)
    assert view[0, 0] == t[0:1, 0:1].view(torch.uint16).item()
    key = id(t)
    del t, view
    assert key not in cpu_ops._VIEWS  # dropped with its tensor: a new one at the id is safe


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_argmax_rows_equals_torch(dtype: torch.dtype) -> None:
    x = torch.randn(7, 49152, generator=torch.Generator().manual_seed(16)).to(dtype)
    x[2, 100] = x[2, 4000] = 50.0  # a tie: the first index wins, as in torch
    x[5] = float("-inf")
    x[6, 17] = float("nan")  # NaN counts as the maximum, as in torch
    got = cpu_ops.argmax_rows(x)
    assert got.dtype == torch.int64
    assert torch.equal(got, x.float().argmax(dim=-1))
    assert got[2] == 100 and got[5] == 0 and got[6] == 17


def test_silu_mul_equals_torch() -> None:
    gate_up = bf16(70, 2 * 1536, seed=17)  # 70 rows: the multi-threaded split
    out = cpu_ops.silu_mul(gate_up)
    g, u = gate_up.float().chunk(2, dim=-1)
    torch.testing.assert_close(out.float(), F.silu(g) * u, atol=1e-2, rtol=2**-7)
    one = cpu_ops.silu_mul(gate_up[:1].contiguous())
    assert torch.equal(one, out[:1])
