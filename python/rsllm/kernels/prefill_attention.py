"""Prefill attention over the paged cache: full prompts, chunked prefill, prefix hits.

A request's q_len queries are the last q_len positions of its seq_len context (the
earlier ones are already in the cache: a prefix hit or an earlier chunk), with a causal
mask. Query rows are (token, head) pairs of one kv-head group flattened together, so a
tile of BLOCK_M rows holds BLOCK_M // GROUP tokens of every head in the group and each
key/value tile read from the cache serves all of them. A decode request (q_len 1) in a
mixed batch is just a request with one token.
"""

# Triton kernel parameters are typed by Triton at launch (pointers, scalars, constexprs).
# ruff: noqa: ANN001

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rsllm.kernels._common import MIN_DOT_DIM, dot_precision, pow2_at_least
from rsllm.kernels.paged_kv import load_kv_tile

_LOG2E = 1.4426950408889634


@triton.jit
def _prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    scale_log2,
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
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    m_block = tl.program_id(0)
    kv_head = tl.program_id(1)
    r = tl.program_id(2)

    q_start = tl.load(query_start_loc_ptr + r)
    q_len = tl.load(query_start_loc_ptr + r + 1) - q_start
    # The grid covers the longest request; shorter ones leave programs idle.
    if m_block * BLOCK_M >= q_len * GROUP:
        return
    seq_len = tl.load(seq_lens_ptr + r)
    context_len = seq_len - q_len

    rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = rows // GROUP
    heads = kv_head * GROUP + rows % GROUP
    row_mask = tok < q_len
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q_rows = (q_start + tok).to(tl.int64) * stride_qt + heads * stride_qh
    # [BLOCK_M, BLOCK_D]
    q = tl.load(
        q_ptr + q_rows[:, None] + d[None, :],
        mask=row_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    q_pos = context_len + tok

    # Keys past the tile's last query are masked for every row: stop there.
    last_tok = tl.minimum((m_block * BLOCK_M + BLOCK_M - 1) // GROUP, q_len - 1)
    kv_end = context_len + last_tok + 1

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    table = block_tables_ptr + r.to(tl.int64) * stride_bt
    for n0 in range(0, kv_end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < kv_end
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
        # [BLOCK_M, BLOCK_N] scores in base 2, causal: key position <= query position.
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        live = (n[None, :] <= q_pos[:, None]) & n_mask[None, :]
        s = tl.where(live, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row with no live key yet (padding rows) keeps m == -inf; shift by 0 there
        # so that exp2 gives 0 instead of NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_rows = (q_start + tok).to(tl.int64) * stride_ot + heads * stride_oh
    tl.store(
        out_ptr + o_rows[:, None] + d[None, :],
        o.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None] & d_mask[None, :],
    )


def paged_prefill_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_query_len: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """Causal attention of each request's queries over its whole paged context.

    Shapes as in `rsllm.kernels.attention.paged_attention`; `out` is [T, Hq, D] and is
    returned. Handles any mix of q_len (1 included) and cached prefix lengths.
    """
    num_requests = seq_lens.shape[0]
    _, num_q_heads, head_dim = query.shape
    num_kv_heads = key_cache.shape[2]
    group = num_q_heads // num_kv_heads
    if num_requests == 0 or max_query_len == 0:
        return out
    block_d = pow2_at_least(head_dim, MIN_DOT_DIM)
    # Sized so that ptxas keeps the tile in registers without spilling on sm_90 (the
    # gathered K/V pointers cost registers too): checked in tests/test_kernels_compile.py.
    block_m = 128 if head_dim <= 128 else 64
    block_n = 64 if head_dim <= 64 else 32
    grid = (triton.cdiv(max_query_len * group, block_m), num_kv_heads, num_requests)
    _prefill_kernel[grid](
        query,
        key_cache,
        value_cache,
        out,
        query_start_loc,
        seq_lens,
        block_tables,
        scale * _LOG2E,
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
        GROUP=group,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_SIZE=key_cache.shape[1],
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        DOT_PRECISION=dot_precision(query.dtype),
        num_warps=8,
        num_stages=2,
    )
    return out
