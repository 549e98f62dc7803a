"""KV store: write each token's key and value into the paged cache at its slot."""

# Triton kernel parameters are typed by Triton at launch (pointers, scalars, constexprs).
# ruff: noqa: ANN001

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rsllm.kernels._common import check_last_dim_contiguous, pow2_at_least


@triton.jit
def _store_kv_kernel(
    key_ptr,
    value_ptr,
    key_cache_ptr,
    value_cache_ptr,
    slot_mapping_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kcb,
    stride_kcs,
    stride_kch,
    stride_vcb,
    stride_vcs,
    stride_vch,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    # One program per token: all of its kv heads at once ([BLOCK_H, BLOCK_D] tiles).
    t = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + t).to(tl.int64)
    # A negative slot marks a padding token (e.g. a CUDA-graph batch padded up): skip it.
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    mask = (h < NUM_KV_HEADS)[:, None] & (d < HEAD_DIM)[None, :]
    t64 = t.to(tl.int64)

    k = tl.load(key_ptr + t64 * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
    v = tl.load(value_ptr + t64 * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
    kc = key_cache_ptr + block * stride_kcb + offset * stride_kcs
    vc = value_cache_ptr + block * stride_vcb + offset * stride_vcs
    tl.store(
        kc + h[:, None] * stride_kch + d[None, :], k.to(key_cache_ptr.dtype.element_ty), mask=mask
    )
    tl.store(
        vc + h[:, None] * stride_vch + d[None, :], v.to(value_cache_ptr.dtype.element_ty), mask=mask
    )


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write key[t] and value[t] into the caches at slot_mapping[t].

    key, value: [T, num_kv_heads, head_dim] (views of a fused qkv are fine);
    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim];
    slot_mapping: [T] int64, block_id * block_size + offset; a negative slot is skipped.
    """
    if key.shape != value.shape or key.dim() != 3:
        raise ValueError(f"key and value must both be [T, H, D], got {key.shape}, {value.shape}")
    if key_cache.shape != value_cache.shape or key_cache.dim() != 4:
        raise ValueError("key_cache and value_cache must both be [blocks, block_size, H, D]")
    num_tokens, num_kv_heads, head_dim = key.shape
    if tuple(key_cache.shape[2:]) != (num_kv_heads, head_dim):
        raise ValueError(f"cache heads/dim {tuple(key_cache.shape[2:])} != key's {key.shape[1:]}")
    if slot_mapping.shape != (num_tokens,):
        raise ValueError(f"slot_mapping must be [{num_tokens}], got {tuple(slot_mapping.shape)}")
    for name, t in (("key", key), ("value", value), ("key_cache", key_cache)):
        check_last_dim_contiguous(name, t)
    check_last_dim_contiguous("value_cache", value_cache)
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens,)](
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        value_cache.stride(0),
        value_cache.stride(1),
        value_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_H=pow2_at_least(num_kv_heads),
        BLOCK_D=pow2_at_least(head_dim),
        BLOCK_SIZE=key_cache.shape[1],
        num_warps=4 if num_kv_heads * head_dim >= 1024 else 1,
    )
