"""The Rust CPU decode kernel (`rsllm._core.paged_decode_attention`, the `cpu` backend's
decode path) equals the torch reference, and rejects bad input with a clear error."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from rsllm import _core
from rsllm.errors import InvalidRequestError
from rsllm.model.attention import (
    CpuBackend,
    TorchReferenceBackend,
    decode_kernel,
    kernel_supports,
    select_backend,
)
from rsllm.model.kv_layout import PAGED, TILED
from test_kernels_attention import Batch, make_batch, reference_attention

DECODES = [(1, 1), (1, 15), (1, 16), (1, 17), (1, 33), (1, 250), (1, 600)]


def tiled(b: Batch) -> Batch:
    """The batch with its paged caches rearranged into the CPU backend's tiles, written
    out here from the layout's definition (keys [blocks, Hkv, D/2, BS, 2], values
    [blocks, Hkv, BS/2, D, 2])."""
    nb, bs, hkv, d = b.key_cache.shape
    k = b.key_cache.view(nb, bs, hkv, d // 2, 2).permute(0, 2, 3, 1, 4).contiguous()
    v = b.value_cache.view(nb, bs // 2, 2, hkv, d).permute(0, 3, 1, 4, 2).contiguous()
    return dataclasses.replace(b, key_cache=k, value_cache=v)


def run_kernel(b: Batch) -> torch.Tensor:
    t = tiled(b)
    return decode_kernel(
        t.query,
        t.key_cache,
        t.value_cache,
        t.block_tables.numpy(),
        t.seq_lens.numpy(),
        t.scale,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiled_store_and_gather_agree_with_the_paged_layout(dtype: torch.dtype) -> None:
    t, nb, bs, hkv, d = 23, 5, 16, 3, 8
    gen = torch.Generator().manual_seed(3)
    key = torch.randn(t, hkv, d, generator=gen).to(dtype)
    value = torch.randn(t, hkv, d, generator=gen).to(dtype)
    slots = torch.randperm(nb * bs, generator=gen)[:t]
    paged = [torch.zeros(PAGED.shapes(nb, bs, hkv, d)[0], dtype=dtype) for _ in "kv"]
    k_shape, v_shape = TILED.shapes(nb, bs, hkv, d)
    tk, tv = torch.zeros(k_shape, dtype=dtype), torch.zeros(v_shape, dtype=dtype)
    PAGED.store(key, value, *paged, slots)
    TILED.store(key, value, tk, tv, slots)
    b = tiled(Batch(key, *paged, *([None] * 5), 1.0))  # type: ignore[arg-type]
    assert torch.equal(tk, b.key_cache) and torch.equal(tv, b.value_cache)
    ids = torch.tensor([4, 0, 2])
    assert torch.equal(TILED.gather(tk, ids, values=False), paged[0][ids])
    assert torch.equal(TILED.gather(tv, ids, values=True), paged[1][ids])
    assert TILED.dims(tk) == PAGED.dims(paged[0]) == (bs, hkv, d)


def test_tiled_layout_needs_even_sizes() -> None:
    with pytest.raises(InvalidRequestError, match="even"):
        TILED.shapes(4, 15, 2, 64)


# head_dim 64 and 128 take the AVX-512 path where the CPU has it, 32 the portable loops.
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("group", [1, 3, 4, 8], ids=lambda g: f"gqa{g}")
def test_float32_equals_reference(head_dim: int, group: int) -> None:
    b = make_batch(DECODES, group, head_dim, torch.float32, torch.device("cpu"), seed=group)
    out = run_kernel(b)
    assert out.dtype == torch.float32 and out.shape == b.query.shape
    # Blocks no request owns hold NaN: a read outside a context would show here.
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference_attention(b), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("head_dim", [32, 64])
def test_bfloat16_equals_reference_of_its_inputs(head_dim: int) -> None:
    b = make_batch(DECODES, 3, head_dim, torch.bfloat16, torch.device("cpu"), seed=5)
    out = run_kernel(b)
    assert out.dtype == torch.bfloat16
    # The kernel computes in float32 and rounds once: within bf16's half ulp of the
    # float32 reference on the same (bf16) inputs.
    ref = reference_attention(b)
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=2**-8)


def test_backend_selection() -> None:
    cpu = torch.device("cpu")
    assert isinstance(select_backend("auto", cpu), CpuBackend)
    assert isinstance(select_backend("cpu", cpu), CpuBackend)
    assert type(select_backend("torch", cpu)) is TorchReferenceBackend
    with pytest.raises(InvalidRequestError, match="attention_backend"):
        select_backend("flash", cpu)
    q = torch.zeros(1, 2, 8)
    assert kernel_supports(q, q) and kernel_supports(q.bfloat16(), q.bfloat16())
    assert not kernel_supports(q.half(), q.half())  # float16 stays on the reference
    assert not kernel_supports(q, q.bfloat16())


def attend_with(backend: TorchReferenceBackend, b: Batch) -> tuple[torch.Tensor, Any]:
    """One attention call of `backend` on the batch, and the metadata it built."""
    meta = backend.build_metadata(
        np.zeros(int(b.query_start_loc[-1]), np.int64),  # no store: slots unused
        b.query_start_loc.numpy(),
        b.seq_lens.numpy(),
        b.block_tables.numpy(),
        16,
        torch.device("cpu"),
    )
    return backend.attend(b.query, b.key_cache, b.value_cache, meta, b.scale), meta


def test_mixed_batch_through_the_backend_equals_the_reference() -> None:
    """Decodes beside a chunked prefill: the cpu backend routes only the decodes to the
    kernel and puts their rows back in place."""
    requests = [(1, 40), (5, 21), (1, 3), (12, 12), (1, 97)]
    # Unowned blocks hold 0, as in the engine's zeroed cache: the torch reference reads
    # (and masks) whole blocks, so NaN padding would poison its rows.
    b = make_batch(requests, 2, 64, torch.float32, torch.device("cpu"), seed=9, unowned=0.0)
    outs = [attend_with(CpuBackend(), tiled(b))[0], attend_with(TorchReferenceBackend(), b)[0]]
    torch.testing.assert_close(outs[0], outs[1], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(outs[0], reference_attention(b), atol=2e-5, rtol=2e-5)


def call_raw(b: Batch, **change) -> None:
    args = {
        "query": b.query.numpy(),
        "key_cache": b.key_cache.numpy(),
        "value_cache": b.value_cache.numpy(),
        "block_tables": b.block_tables.numpy(),
        "seq_lens": b.seq_lens.numpy(),
        "scale": b.scale,
        "out": np.empty_like(b.query.numpy()),
        "dtype": "float32",
    }
    args.update(change)
    _core.paged_decode_attention(**args)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: {"block_tables": np.full_like(b.block_tables.numpy(), 10_000)}, "outside"),
        (lambda b: {"block_tables": np.full_like(b.block_tables.numpy(), -1)}, "outside"),
        (lambda b: {"seq_lens": np.full_like(b.seq_lens.numpy(), 0)}, r"seq_lens\[0\]"),
        (lambda b: {"seq_lens": np.full_like(b.seq_lens.numpy(), 1_000)}, r"seq_lens\[0\]"),
        (lambda b: {"query": b.query.numpy()[:, :3]}, "disagree|multiple|C-contiguous"),
        (lambda b: {"out": np.empty((1, 1, 1), np.float32)}, "disagree"),
        (lambda b: {"query": b.query.double().numpy()}, "query must be a numpy array"),
        (lambda b: {"key_cache": b.key_cache.numpy()[0]}, "5 dimensions"),
        (lambda b: {"value_cache": b.key_cache.numpy()}, "must be tiled"),
        (lambda b: {"key_cache": np.repeat(b.key_cache.numpy(), 2, 2)[:, :, ::2]}, "C-contig"),
        (lambda b: {"dtype": "float16"}, "dtype must be"),
    ],
    ids=[
        "block-past-cache",
        "negative-block",
        "empty-seq",
        "seq-past-table",
        "query-heads",
        "out-shape",
        "float64",
        "cache-ndim",
        "paged-value-cache",
        "strided-cache",
        "dtype-name",
    ],
)
def test_bad_input_is_invalid_request(change, message: str) -> None:
    b = tiled(make_batch([(1, 20), (1, 5)], 2, 64, torch.float32, torch.device("cpu")))
    with pytest.raises(InvalidRequestError, match=message):
        call_raw(b, **change(b))


def test_out_may_not_alias_query() -> None:
    b = tiled(make_batch([(1, 20)], 2, 64, torch.float32, torch.device("cpu")))
    q = b.query.numpy()
    with pytest.raises(InvalidRequestError, match="out must be"):
        call_raw(b, query=q, out=q)


def test_kernel_runs_on_torchs_openmp_team() -> None:
    """With torch imported, the kernel's threads are torch's OpenMP team (a pool of our
    own would fight torch's spinning threads for the cores)."""
    assert _core.kernel_runtime() == "openmp"


def test_bfloat16_prefills_one_at_a_time_equal_the_padded_batch() -> None:
    """Several prefills (with prefixes) beside decodes, in bf16: the cpu backend runs each
    prefill alone (no padding to the longest) and agrees with the reference's padded
    batch and with float32 attention."""
    requests = [(1, 40), (5, 21), (30, 30), (12, 60), (1, 97), (3, 3)]
    b = make_batch(requests, 3, 64, torch.bfloat16, torch.device("cpu"), seed=4, unowned=0.0)
    outs = []
    for backend, batch in ((CpuBackend(), tiled(b)), (TorchReferenceBackend(), b)):
        out, meta = attend_with(backend, batch)
        assert meta.plan is not None and meta.plan.prefill is not None
        assert len(meta.plan.prefill.spans) == 4
        outs.append(out.float())
    torch.testing.assert_close(outs[0], outs[1], atol=3e-2, rtol=2**-6)
    torch.testing.assert_close(outs[0], reference_attention(b), atol=3e-2, rtol=2**-6)


@pytest.mark.parametrize(
    "requests", [[(1, 40), (1, 17), (1, 1)], [(1, 40), (6, 21), (1, 3)]], ids=["decodes", "mixed"]
)
def test_new_keys_and_values_are_stored_before_they_are_attended_to(requests) -> None:
    """`store_kv` then `attend`: the cpu backend's Rust store into its tiles (contiguous
    bf16 rows, as its rope makes them), then attention, equals the torch reference's
    paged store then attention."""
    b = make_batch(requests, 3, 64, torch.bfloat16, torch.device("cpu"), seed=6, unowned=0.0)
    bs = b.key_cache.shape[1]
    slots = []
    for r, (q_len, seq_len) in enumerate(requests):
        for pos in range(seq_len - q_len, seq_len):
            slots.append(int(b.block_tables[r, pos // bs]) * bs + pos % bs)
    hkv, d = b.key_cache.shape[2:]
    gen = torch.Generator().manual_seed(7)
    new_k, new_v = (torch.randn(len(slots), hkv, d, generator=gen).bfloat16() for _ in "kv")
    outs, caches = [], []
    for backend, batch in ((CpuBackend(), tiled(b)), (TorchReferenceBackend(), b)):
        meta = backend.build_metadata(
            np.array(slots, np.int64),
            batch.query_start_loc.numpy(),
            batch.seq_lens.numpy(),
            batch.block_tables.numpy(),
            bs,
            torch.device("cpu"),
        )
        kc, vc = batch.key_cache.clone(), batch.value_cache.clone()
        backend.store_kv(new_k, new_v, kc, vc, meta)
        outs.append(backend.attend(batch.query, kc, vc, meta, b.scale).float())
        caches.append((kc, vc))
    torch.testing.assert_close(outs[0], outs[1], atol=3e-2, rtol=2**-6)
    stored = tiled(dataclasses.replace(b, key_cache=caches[1][0], value_cache=caches[1][1]))
    assert torch.equal(caches[0][0], stored.key_cache)
    assert torch.equal(caches[0][1], stored.value_cache)
