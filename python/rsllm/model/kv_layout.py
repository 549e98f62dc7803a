"""KV cache layouts: where each (block, position, KV head, dim) value lives.

`paged` is `[num_blocks, block_size, num_kv_heads, head_dim]` for keys and values, the
layout of the torch reference and the Triton kernels. `tiled` is the CPU backend's (the
Rust decode kernel reads it; `rust/kv_layout.rs` says why): per (block, KV head) a tile,

    keys   [num_blocks, num_kv_heads, head_dim / 2, block_size, 2]
    values [num_blocks, num_kv_heads, block_size / 2, head_dim, 2]

Both give `store` (tokens into their slots) and `gather` (blocks back as the paged
`[n, block_size, num_kv_heads, head_dim]`, for the torch paths that attend over dense
keys: prefills, and decodes in dtypes the kernel does not take).
"""

from __future__ import annotations

from typing import Protocol

import torch

from rsllm.errors import InvalidRequestError
from rsllm.model import cpu_ops


class KVLayout(Protocol):
    name: str

    def shapes(
        self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The key and value cache shapes of one layer."""
        ...

    def dims(self, key_cache: torch.Tensor) -> tuple[int, int, int]:
        """(block_size, num_kv_heads, head_dim) of a key cache (not a value cache)."""
        ...

    def store(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        """Write each token's K and V [T, Hkv, D] into its slot (block * block_size + i)."""
        ...

    def gather(self, cache: torch.Tensor, ids: torch.Tensor, values: bool) -> torch.Tensor:
        """Blocks `ids` [n] of a key (or value) cache as [n, block_size, Hkv, D]."""
        ...


class PagedLayout:
    name = "paged"

    def shapes(
        self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        return shape, shape

    def dims(self, key_cache: torch.Tensor) -> tuple[int, int, int]:
        _, bs, hkv, d = key_cache.shape
        return bs, hkv, d

    def store(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        _, _, hkv, d = key_cache.shape
        key_cache.view(-1, hkv, d).index_copy_(0, slot_mapping, key.to(key_cache.dtype))
        value_cache.view(-1, hkv, d).index_copy_(0, slot_mapping, value.to(value_cache.dtype))

    def gather(self, cache: torch.Tensor, ids: torch.Tensor, values: bool) -> torch.Tensor:
        return cache.index_select(0, ids)


class TiledLayout:
    name = "tiled"

    def shapes(
        self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if block_size % 2 or head_dim % 2:
            raise InvalidRequestError(
                f"the CPU backend's KV cache needs an even block_size and head_dim, got "
                f"{block_size} and {head_dim}"
            )
        return (
            (num_blocks, num_kv_heads, head_dim // 2, block_size, 2),
            (num_blocks, num_kv_heads, block_size // 2, head_dim, 2),
        )

    def dims(self, key_cache: torch.Tensor) -> tuple[int, int, int]:
        _, hkv, pairs, bs, _ = key_cache.shape
        return bs, hkv, 2 * pairs

    def store(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        if _rust_stores(key, value, key_cache):
            cpu_ops.store_kv(key, value, slot_mapping, key_cache, value_cache)
            return
        bs, hkv, d = self.dims(key_cache)
        block, pos = slot_mapping // bs, slot_mapping % bs
        # Advanced indices split by slices: the token dim comes first in the indexed view.
        key_cache[block, :, :, pos, :] = key.to(key_cache.dtype).view(-1, hkv, d // 2, 2)
        value_cache[block, :, pos // 2, :, pos % 2] = value.to(value_cache.dtype)

    def gather(self, cache: torch.Tensor, ids: torch.Tensor, values: bool) -> torch.Tensor:
        blocks = cache.index_select(0, ids)
        n, hkv = blocks.shape[:2]
        if values:  # [n, Hkv, BS/2, D, 2] -> [n, BS/2, 2, Hkv, D]
            d = blocks.shape[3]
            return blocks.permute(0, 2, 4, 1, 3).reshape(n, -1, hkv, d)
        # [n, Hkv, D/2, BS, 2] -> [n, BS, Hkv, D/2, 2]
        bs = blocks.shape[3]
        return blocks.permute(0, 3, 1, 2, 4).reshape(n, bs, hkv, -1)


def _rust_stores(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor) -> bool:
    """The Rust store takes contiguous float32 or bfloat16 rows on a CPU, of the cache's
    dtype (the rope of the CPU path hands it exactly that)."""
    return (
        key_cache.device.type == "cpu"
        and key.dtype == value.dtype == key_cache.dtype
        and key.dtype in cpu_ops.KERNEL_DTYPES
        and key.is_contiguous()
        and value.is_contiguous()
    )


PAGED = PagedLayout()
TILED = TiledLayout()
