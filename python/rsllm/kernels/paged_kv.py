"""The device helper both attention kernels use to read the paged KV cache."""

# Triton device functions are typed by Triton when the calling kernel is compiled.
# ruff: noqa: ANN001, ANN201

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_kv_tile(
    k_cache_ptr,
    v_cache_ptr,
    table,
    n,
    n_mask,
    d,
    d_mask,
    kv_head,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    BLOCK_SIZE: tl.constexpr,
):
    """K and V of context positions `n` ([BLOCK_N]) of one request, gathered through its
    block table `table`: two [BLOCK_N, BLOCK_D] tiles, zero where masked."""
    block = tl.load(table + n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
    offset = n % BLOCK_SIZE
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = _load_rows(k_cache_ptr, block, offset, kv_head, d, kv_mask, stride_kb, stride_ks, stride_kh)
    v = _load_rows(v_cache_ptr, block, offset, kv_head, d, kv_mask, stride_vb, stride_vs, stride_vh)
    return k, v


@triton.jit
def _load_rows(cache_ptr, block, offset, kv_head, d, mask, stride_b, stride_s, stride_h):
    """One cache's rows (block, offset) of `kv_head`, dims `d`: [BLOCK_N, BLOCK_D]."""
    return tl.load(
        cache_ptr
        + block[:, None] * stride_b
        + offset[:, None] * stride_s
        + kv_head * stride_h
        + d[None, :],
        mask=mask,
        other=0.0,
    )
