"""The Triton RMSNorm (plain and fused with the residual add), rotary embedding and
SiLU-and-multiply equal torch references written the way Hugging Face's Llama computes
them. Run in place on a GPU or under TRITON_INTERPRET=1 (see kernel_harness)."""

from __future__ import annotations

import pytest
import torch

from kernel_harness import DTYPES, TOLERANCE, device_or_delegate, supports

DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
EPS = 1e-5


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device | None:
    dev = device_or_delegate(request)
    dtype = request.node.callspec.params.get("dtype") if hasattr(request.node, "callspec") else None
    if dev is not None and dtype is not None and not supports(dev, dtype):
        pytest.skip("bf16 is checked on a GPU only")
    return dev


def randn(*shape: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(dtype).to(device)


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm: float32 statistics, rounded to the dtype, then scaled by the weight."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)
    return weight * normed.to(x.dtype)


def assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == ref.dtype and out.shape == ref.shape
    torch.testing.assert_close(out.cpu().float(), ref.cpu().float(), **TOLERANCE[ref.dtype])


@dtypes
@pytest.mark.parametrize(("tokens", "hidden"), [(1, 64), (7, 576), (3, 1000)])
def test_rms_norm(device, dtype, tokens, hidden):
    if device is None:
        return
    from rsllm.kernels.norm import rms_norm

    x = randn(tokens, hidden, dtype=dtype, device=device, seed=0)
    weight = randn(hidden, dtype=dtype, device=device, seed=1)
    assert_close(rms_norm(x, weight, EPS), reference_rms_norm(x, weight))


@dtypes
def test_rms_norm_per_head_on_qkv_view(device, dtype):
    """Qwen3's q/k norm: normalise each head of q read in place from a fused qkv."""
    if device is None:
        return
    from rsllm.kernels.norm import rms_norm

    qkv = randn(5, (3 + 2) * 32, dtype=dtype, device=device, seed=2)
    q = qkv[:, : 3 * 32].view(5, 3, 32)
    weight = randn(32, dtype=dtype, device=device, seed=3)
    assert_close(rms_norm(q, weight, EPS), reference_rms_norm(q, weight))


@dtypes
@pytest.mark.parametrize(("tokens", "hidden"), [(1, 64), (6, 576)])
def test_fused_add_rms_norm(device, dtype, tokens, hidden):
    if device is None:
        return
    from rsllm.kernels.norm import fused_add_rms_norm

    x = randn(tokens, hidden, dtype=dtype, device=device, seed=4)
    residual = randn(tokens, hidden, dtype=dtype, device=device, seed=5)
    weight = randn(hidden, dtype=dtype, device=device, seed=6)
    ref_residual = x + residual  # in the dtype, as the model adds
    ref_out = reference_rms_norm(ref_residual, weight)
    out, new_residual = fused_add_rms_norm(x, residual, weight, EPS)
    assert out.data_ptr() == x.data_ptr() and new_residual.data_ptr() == residual.data_ptr()
    assert_close(new_residual, ref_residual)
    assert_close(out, ref_out)


def cos_sin_cache(rot_dim: int, max_position: int, device: torch.device) -> torch.Tensor:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim))
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(device)


def reference_rotary(
    x: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor, neox: bool
) -> torch.Tensor:
    """HF's rotate_half formula (neox) or interleaved pairs (GPT-J), in float32."""
    rot_dim = cache.shape[1]
    cos, sin = cache[positions.long()].float().chunk(2, dim=-1)  # [T, rot_dim / 2] each
    cos, sin = cos[:, None, :], sin[:, None, :]
    xf = x.float()
    rot, rest = xf[..., :rot_dim], xf[..., rot_dim:]
    if neox:
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rotated = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    return torch.cat([rotated, rest], dim=-1).to(x.dtype)


@dtypes
@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "copy"])
@pytest.mark.parametrize("rot_dim", [32, 16], ids=["full", "partial"])
def test_rotary_embedding(device, dtype, neox, inplace, rot_dim):
    """q and k are views into one fused qkv, as the attention layer produces them."""
    if device is None:
        return
    from rsllm.kernels.rotary import rotary_embedding

    tokens, q_heads, kv_heads, head_dim = 9, 8, 2, 32
    qkv = randn(tokens, (q_heads + 2 * kv_heads) * head_dim, dtype=dtype, device=device, seed=7)
    q = qkv[:, : q_heads * head_dim].view(tokens, q_heads, head_dim)
    k = qkv[:, q_heads * head_dim : (q_heads + kv_heads) * head_dim].view(
        tokens, kv_heads, head_dim
    )
    positions = torch.tensor([0, 1, 2, 17, 100, 4095, 5, 5, 3000], dtype=torch.int64)
    cache = cos_sin_cache(rot_dim, 4096, device)
    ref_q = reference_rotary(q, positions, cache, neox)
    ref_k = reference_rotary(k, positions, cache, neox)
    v_before = qkv[:, (q_heads + kv_heads) * head_dim :].clone()

    out_q, out_k = rotary_embedding(positions.to(device), q, k, cache, neox, inplace)
    assert_close(out_q, ref_q)
    assert_close(out_k, ref_k)
    assert (out_q.data_ptr() == q.data_ptr()) == inplace
    # Writing q and k in place must leave the rest of the row (v) alone.
    assert torch.equal(qkv[:, (q_heads + kv_heads) * head_dim :], v_before)


@dtypes
@pytest.mark.parametrize(("tokens", "inter"), [(1, 64), (5, 1500)])
def test_silu_and_mul(device, dtype, tokens, inter):
    if device is None:
        return
    from rsllm.kernels.activation import silu_and_mul

    x = randn(tokens, 2 * inter, dtype=dtype, device=device, seed=8)
    gate, up = x.chunk(2, dim=-1)
    ref = torch.nn.functional.silu(gate.float()) * up.float()
    assert_close(silu_and_mul(x), ref.to(dtype))


def test_available_matches_the_machine():
    import importlib.util

    from rsllm.kernels import available

    expected = importlib.util.find_spec("triton") is not None and torch.cuda.is_available()
    assert available() is expected


def test_package_exports_the_kernel_interface():
    """The model's backend selection looks the functions up on `rsllm.kernels` itself."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    import rsllm.kernels as kernels
    from rsllm.kernels import activation, attention, norm, rotary

    assert kernels.store_kv is attention.store_kv
    assert kernels.paged_attention is attention.paged_attention
    assert kernels.fused_add_rms_norm is norm.fused_add_rms_norm
    assert kernels.rotary_embedding is rotary.rotary_embedding
    assert kernels.silu_and_mul is activation.silu_and_mul
    with pytest.raises(AttributeError):
        _ = kernels.no_such_kernel


def test_rejects_bad_shapes(device):
    if device is None:
        return
    from rsllm.kernels.activation import silu_and_mul
    from rsllm.kernels.norm import rms_norm

    with pytest.raises(ValueError, match=r"\[T, 2I\]"):
        silu_and_mul(torch.zeros((2, 5), device=device))
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.zeros((2, 8), device=device), torch.ones(4, device=device), EPS)
