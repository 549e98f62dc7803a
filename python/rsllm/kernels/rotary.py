"""Rotary position embedding on q and k, with a precomputed cos/sin cache.

cos_sin_cache is [max_position, rot_dim]: cos in the first rot_dim/2 columns, sin in
the last (vLLM's layout). Neox style (Llama, Qwen, Mistral in Hugging Face: rotate the
two halves of the rotated dims) or GPT-J style (rotate interleaved pairs). Dims past
rot_dim (partial rotary) pass through unchanged.
"""

# Triton kernel parameters are typed by Triton at launch (pointers, scalars, constexprs).
# ruff: noqa: ANN001

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rsllm.kernels._common import check_last_dim_contiguous, pow2_at_least


@triton.jit
def _rotate_heads(
    x_ptr,
    out_ptr,
    t,
    cos,
    sin,
    stride_xt,
    stride_xh,
    stride_ot,
    stride_oh,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    ROT_HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr,
    IS_NEOX: tl.constexpr,
    COPY_REST: tl.constexpr,
    BLOCK_REST: tl.constexpr,
):
    h = tl.arange(0, BLOCK_H)
    i = tl.arange(0, BLOCK_R)
    mask = (h < NUM_HEADS)[:, None] & (i < ROT_HALF)[None, :]
    if IS_NEOX:
        first = i
        second = i + ROT_HALF
    else:
        first = 2 * i
        second = 2 * i + 1
    x_row = x_ptr + t * stride_xt + h[:, None] * stride_xh
    o_row = out_ptr + t * stride_ot + h[:, None] * stride_oh
    # [BLOCK_H, BLOCK_R] each; cos and sin are [BLOCK_R] in float32.
    x1 = tl.load(x_row + first[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + second[None, :], mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * cos[None, :] - x2 * sin[None, :]
    o2 = x2 * cos[None, :] + x1 * sin[None, :]
    tl.store(o_row + first[None, :], o1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o_row + second[None, :], o2.to(out_ptr.dtype.element_ty), mask=mask)
    if COPY_REST:
        # Out of place with partial rotary: the untouched dims still need copying.
        rest = 2 * ROT_HALF + tl.arange(0, BLOCK_REST)
        rest_mask = (h < NUM_HEADS)[:, None] & (rest < HEAD_DIM)[None, :]
        x = tl.load(x_row + rest[None, :], mask=rest_mask)
        tl.store(o_row + rest[None, :], x, mask=rest_mask)


@triton.jit
def _rotary_kernel(
    positions_ptr,
    q_ptr,
    k_ptr,
    q_out_ptr,
    k_out_ptr,
    cos_sin_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_qot,
    stride_qoh,
    stride_kot,
    stride_koh,
    stride_cs,
    NUM_Q_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    ROT_HALF: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    IS_NEOX: tl.constexpr,
    COPY_REST: tl.constexpr,
    BLOCK_REST: tl.constexpr,
):
    # One program per token: its position's cos/sin once, for all q and k heads.
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + t).to(tl.int64)
    i = tl.arange(0, BLOCK_R)
    cos = tl.load(cos_sin_ptr + pos * stride_cs + i, mask=i < ROT_HALF, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + ROT_HALF + i, mask=i < ROT_HALF, other=0.0)
    cos = cos.to(tl.float32)
    sin = sin.to(tl.float32)
    _rotate_heads(
        q_ptr,
        q_out_ptr,
        t,
        cos,
        sin,
        stride_qt,
        stride_qh,
        stride_qot,
        stride_qoh,
        NUM_Q_HEADS,
        HEAD_DIM,
        ROT_HALF,
        BLOCK_Q,
        BLOCK_R,
        IS_NEOX,
        COPY_REST,
        BLOCK_REST,
    )
    _rotate_heads(
        k_ptr,
        k_out_ptr,
        t,
        cos,
        sin,
        stride_kt,
        stride_kh,
        stride_kot,
        stride_koh,
        NUM_KV_HEADS,
        HEAD_DIM,
        ROT_HALF,
        BLOCK_K,
        BLOCK_R,
        IS_NEOX,
        COPY_REST,
        BLOCK_REST,
    )


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox_style: bool = True,
    inplace: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query [T, Hq, D] and key [T, Hkv, D] by positions [T].

    In place (the default; views into a fused qkv are fine) or into new contiguous
    tensors. Returns (query, key) as rotated.
    """
    if query.dim() != 3 or key.dim() != 3 or query.shape[0] != key.shape[0]:
        raise ValueError(f"query and key must be [T, H, D], got {query.shape}, {key.shape}")
    num_tokens, num_q_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    if key.shape[2] != head_dim:
        raise ValueError(f"key head_dim {key.shape[2]} != query head_dim {head_dim}")
    if positions.shape != (num_tokens,):
        raise ValueError(f"positions must be [{num_tokens}], got {tuple(positions.shape)}")
    rot_dim = cos_sin_cache.shape[1] if cos_sin_cache.dim() == 2 else 0
    if rot_dim == 0 or rot_dim % 2 or rot_dim > head_dim:
        raise ValueError(f"cos_sin_cache must be [max_position, rot_dim <= {head_dim}], even")
    for name, t in (("query", query), ("key", key), ("cos_sin_cache", cos_sin_cache)):
        check_last_dim_contiguous(name, t)
    if inplace:
        q_out, k_out = query, key
    else:
        q_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
        k_out = torch.empty(key.shape, dtype=key.dtype, device=key.device)
    if num_tokens == 0:
        return q_out, k_out
    rest = head_dim - rot_dim
    _rotary_kernel[(num_tokens,)](
        positions,
        query,
        key,
        q_out,
        k_out,
        cos_sin_cache,
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        q_out.stride(0),
        q_out.stride(1),
        k_out.stride(0),
        k_out.stride(1),
        cos_sin_cache.stride(0),
        NUM_Q_HEADS=num_q_heads,
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        ROT_HALF=rot_dim // 2,
        BLOCK_Q=pow2_at_least(num_q_heads),
        BLOCK_K=pow2_at_least(num_kv_heads),
        BLOCK_R=pow2_at_least(rot_dim // 2),
        IS_NEOX=is_neox_style,
        COPY_REST=not inplace and rest > 0,
        BLOCK_REST=pow2_at_least(max(rest, 1)),
        num_warps=4 if num_q_heads * head_dim >= 2048 else 1,
    )
    return q_out, k_out
