"""Paged decode attention, flash-decoding style.

Every request has one query token. A program takes one (request, kv head, context
split): the GROUP query heads that share the kv head are the rows of one tile, so each
key/value block is read once for the whole group. Long contexts are cut into splits
that run in parallel; each writes a partial output and its log-sum-exp, and a small
reduce kernel merges them. With a single split the first kernel writes the output.
"""

# Triton kernel parameters are typed by Triton at launch (pointers, scalars, constexprs).
# ruff: noqa: ANN001

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rsllm.kernels._common import (
    MIN_DOT_DIM,
    dot_precision,
    parallel_units,
    pow2_at_least,
)
from rsllm.kernels.paged_kv import load_kv_tile

# log2(e): the kernels work in base 2 (exp2 is the fast instruction).
_LOG2E = 1.4426950408889634
# Below this many context tokens per split, the reduce costs more than it saves.
_MIN_SPLIT_TOKENS = 128
_MAX_SPLITS = 64


@triton.jit
def _decode_split_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    part_out_ptr,
    part_lse_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    scale_log2,
    split_len,
    num_splits,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_bt,
    stride_ot,
    stride_oh,
    NUM_Q_HEADS: tl.constexpr,
    SINGLE_SPLIT: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    r = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq_len = tl.load(seq_lens_ptr + r)
    q_tok = tl.load(query_start_loc_ptr + r).to(tl.int64)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    g_mask = g < GROUP
    d_mask = d < HEAD_DIM
    heads = kv_head * GROUP + g

    # [BLOCK_G, BLOCK_D]: the group's query heads; padding rows are zeros.
    q = tl.load(
        q_ptr + q_tok * stride_qt + heads[:, None] * stride_qh + d[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
        other=0.0,
    )

    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    table = block_tables_ptr + r.to(tl.int64) * stride_bt
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < end
        # [BLOCK_N, BLOCK_D] each, gathered through the block table.
        k, v = load_kv_tile(
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
            BLOCK_SIZE,
        )
        # [BLOCK_G, BLOCK_N] scores, already in base 2.
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        s = tl.where(n_mask[None, :], s, float("-inf"))
        # Each iteration has at least one live key, so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    # An empty split (context shorter than the split's start) has l_i == 0.
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]
    out_mask = g_mask[:, None] & d_mask[None, :]
    if SINGLE_SPLIT:
        tl.store(
            out_ptr + q_tok * stride_ot + heads[:, None] * stride_oh + d[None, :],
            o.to(out_ptr.dtype.element_ty),
            mask=out_mask,
        )
    else:
        # Partials are [R, NUM_Q_HEADS, num_splits, HEAD_DIM] and [R, NUM_Q_HEADS, num_splits].
        row = (r.to(tl.int64) * NUM_Q_HEADS + heads) * num_splits + split
        tl.store(part_out_ptr + row[:, None] * HEAD_DIM + d[None, :], o, mask=out_mask)
        lse = tl.where(empty, float("-inf"), m_i + tl.log2(l_safe))
        tl.store(part_lse_ptr + row, lse, mask=g_mask)


@triton.jit
def _decode_reduce_kernel(
    out_ptr,
    part_out_ptr,
    part_lse_ptr,
    query_start_loc_ptr,
    num_splits,
    stride_ot,
    stride_oh,
    NUM_Q_HEADS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0)
    h = tl.program_id(1)
    q_tok = tl.load(query_start_loc_ptr + r).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_mask = s < num_splits
    row = (r.to(tl.int64) * NUM_Q_HEADS + h) * num_splits + s
    lse = tl.load(part_lse_ptr + row, mask=s_mask, other=float("-inf"))
    m = tl.max(lse, 0)
    # All splits empty only for a zero-length context (padding): output zeros, not NaN.
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)
    o = tl.load(
        part_out_ptr + row[:, None] * HEAD_DIM + d[None, :],
        mask=s_mask[:, None] & (d < HEAD_DIM)[None, :],
        other=0.0,
    )
    w_sum = tl.sum(w, 0)
    res = tl.sum(o * w[:, None], 0) / tl.where(w_sum == 0.0, 1.0, w_sum)
    tl.store(
        out_ptr + q_tok * stride_ot + h * stride_oh + d,
        res.to(out_ptr.dtype.element_ty),
        mask=d < HEAD_DIM,
    )


def choose_num_splits(
    num_requests: int, num_kv_heads: int, max_seq_len: int, device: torch.device
) -> int:
    """Splits per request so that about two programs per SM run, never tiny splits."""
    programs = num_requests * num_kv_heads
    wanted = triton.cdiv(2 * parallel_units(device), max(programs, 1))
    most = max(1, triton.cdiv(max_seq_len, _MIN_SPLIT_TOKENS))
    return max(1, min(wanted, most, _MAX_SPLITS))


def paged_decode_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_seq_len: int,
    out: torch.Tensor,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Attention for a batch where every request has exactly one query token.

    Shapes as in `rsllm.kernels.attention.paged_attention`; `out` is [T, Hq, D] and is
    returned. `num_splits` (context splits per request) defaults to a heuristic from
    the device's SM count and `max_seq_len`; the result does not depend on it.
    """
    num_requests = seq_lens.shape[0]
    _, num_q_heads, head_dim = query.shape
    num_kv_heads = key_cache.shape[2]
    block_size = key_cache.shape[1]
    group = num_q_heads // num_kv_heads
    if num_requests == 0:
        return out
    if num_splits is None:
        num_splits = choose_num_splits(num_requests, num_kv_heads, max_seq_len, query.device)
    # 32 keys a tile at head_dim 128 keeps the gathered K/V pointers in registers on
    # sm_90 without spills (tests/test_kernels_compile.py).
    block_n = 64 if head_dim <= 64 else 32
    # Each split is a whole number of key tiles; the last ones may be empty for short
    # contexts, which the reduce handles.
    split_len = triton.cdiv(triton.cdiv(max(max_seq_len, 1), num_splits), block_n) * block_n
    num_splits = max(1, triton.cdiv(max(max_seq_len, 1), split_len))

    if num_splits > 1:
        part_out = torch.empty(
            (num_requests, num_q_heads, num_splits, head_dim),
            dtype=torch.float32,
            device=query.device,
        )
        part_lse = torch.empty(
            (num_requests, num_q_heads, num_splits), dtype=torch.float32, device=query.device
        )
    else:
        # Never written with one split; any float32 tensor on the device will do.
        part_out = part_lse = out.new_empty((1,), dtype=torch.float32)
    block_d = pow2_at_least(head_dim, MIN_DOT_DIM)
    _decode_split_kernel[(num_requests, num_kv_heads, num_splits)](
        query,
        key_cache,
        value_cache,
        out,
        part_out,
        part_lse,
        query_start_loc,
        seq_lens,
        block_tables,
        scale * _LOG2E,
        split_len,
        num_splits,
        query.stride(0),
        query.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        value_cache.stride(0),
        value_cache.stride(1),
        value_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        NUM_Q_HEADS=num_q_heads,
        SINGLE_SPLIT=num_splits == 1,
        GROUP=group,
        BLOCK_G=pow2_at_least(group, MIN_DOT_DIM),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_SIZE=block_size,
        BLOCK_N=block_n,
        DOT_PRECISION=dot_precision(query.dtype),
        num_warps=4,
        num_stages=3,
    )
    if num_splits > 1:
        _decode_reduce_kernel[(num_requests, num_q_heads)](
            out,
            part_out,
            part_lse,
            query_start_loc,
            num_splits,
            out.stride(0),
            out.stride(1),
            NUM_Q_HEADS=num_q_heads,
            BLOCK_S=pow2_at_least(num_splits),
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            num_warps=1 if head_dim <= 64 else 2,
        )
    return out
