"""Paged attention on the GPU: the same functions as the torch reference backend.

`store_kv` writes a step's keys and values into the cache; `paged_attention` reads them
for every request of the flat batch. A batch of decodes only (max_query_len == 1) goes
to the split-K decode kernel; anything else (prefill, chunked prefill, prefix hits,
decodes mixed with them) to the prefill kernel. The choice needs only host integers,
never a device sync.
"""

from __future__ import annotations

import torch

from rsllm.kernels._common import check_last_dim_contiguous
from rsllm.kernels.decode_attention import paged_decode_attention
from rsllm.kernels.kv_store import store_kv
from rsllm.kernels.prefill_attention import paged_prefill_attention


def _check(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
) -> None:
    if query.dim() != 3:
        raise ValueError(f"query must be [T, Hq, D], got {tuple(query.shape)}")
    if key_cache.dim() != 4 or key_cache.shape != value_cache.shape:
        raise ValueError("key_cache and value_cache must both be [blocks, block_size, Hkv, D]")
    num_q_heads, head_dim = query.shape[1:]
    num_kv_heads = key_cache.shape[2]
    if key_cache.shape[3] != head_dim:
        raise ValueError(f"cache head_dim {key_cache.shape[3]} != query head_dim {head_dim}")
    if num_q_heads % num_kv_heads != 0:
        raise ValueError(f"{num_q_heads} query heads are not a multiple of {num_kv_heads}")
    num_requests = seq_lens.shape[0]
    if query_start_loc.shape != (num_requests + 1,):
        raise ValueError(f"query_start_loc must be [{num_requests + 1}]")
    if block_tables.dim() != 2 or block_tables.shape[0] != num_requests:
        raise ValueError(f"block_tables must be [{num_requests}, B]")
    check_last_dim_contiguous("query", query)
    check_last_dim_contiguous("key_cache", key_cache)
    check_last_dim_contiguous("value_cache", value_cache)
    check_last_dim_contiguous("block_tables", block_tables)


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_query_len: int,
    max_seq_len: int,
) -> torch.Tensor:
    """Causal attention for a flat batch of requests over the paged KV cache.

    query: [T, Hq, D]; key_cache, value_cache: [num_blocks, block_size, Hkv, D], already
    holding this step's keys and values (`store_kv` first); query_start_loc: [R+1] int32;
    seq_lens: [R] int32 (context after this step); block_tables: [R, B] int32.
    Request r's queries are the last q_len positions of its seq_len context.
    Returns out: [T, Hq, D] in query's dtype.
    """
    _check(query, key_cache, value_cache, query_start_loc, seq_lens, block_tables)
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if max_query_len == 1:
        return paged_decode_attention(
            query,
            key_cache,
            value_cache,
            query_start_loc,
            seq_lens,
            block_tables,
            scale,
            max_seq_len,
            out,
        )
    return paged_prefill_attention(
        query,
        key_cache,
        value_cache,
        query_start_loc,
        seq_lens,
        block_tables,
        scale,
        max_query_len,
        out,
    )


__all__ = ["paged_attention", "store_kv"]
