"""The Triton KV store and paged attention equal a plain torch reference.

Run in place on a GPU (bf16 too) or under TRITON_INTERPRET=1; on a CPU-only machine
each test is run in an interpreter child (see kernel_harness).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from kernel_harness import DTYPES, TOLERANCE, device_or_delegate, supports

BLOCK_SIZE = 16
NUM_KV_HEADS = 2


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device | None:
    return device_or_delegate(request)


@dataclass
class Batch:
    query: torch.Tensor  # [T, Hq, D]
    key_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor
    query_start_loc: torch.Tensor  # [R+1] int32
    seq_lens: torch.Tensor  # [R] int32
    block_tables: torch.Tensor  # [R, B] int32, padded with 0
    max_query_len: int
    max_seq_len: int
    scale: float


def make_batch(
    requests: list[tuple[int, int]],
    group: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    unowned: float = float("nan"),
) -> Batch:
    """requests: (q_len, seq_len) per request. Blocks are scattered over the cache.

    Every block that no request owns, the null block 0 included, holds `unowned` (NaN by
    default), so a kernel that reads outside a request's context fails loudly.
    """
    gen = torch.Generator().manual_seed(seed)
    num_q_heads = NUM_KV_HEADS * group
    needed = [math.ceil(seq_len / BLOCK_SIZE) for _, seq_len in requests]
    num_blocks = sum(needed) + 5
    # Block ids 1.. in a random order: tables are scattered and never contiguous.
    order = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    width = max(needed) + 2  # padded tables, as the scheduler sends them
    tables = torch.zeros((len(requests), width), dtype=torch.int32)
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, head_dim)
    key_cache = torch.full(shape, unowned)
    value_cache = torch.full(shape, unowned)
    for r, n in enumerate(needed):
        ids = [order.pop() for _ in range(n)]
        tables[r, :n] = torch.tensor(ids, dtype=torch.int32)
        for b in ids:
            key_cache[b] = torch.randn(shape[1:], generator=gen)
            value_cache[b] = torch.randn(shape[1:], generator=gen)
    q_lens = [q for q, _ in requests]
    total = sum(q_lens)
    query = torch.randn((total, num_q_heads, head_dim), generator=gen)
    loc = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return Batch(
        query=query.to(dtype).to(device),
        key_cache=key_cache.to(dtype).to(device),
        value_cache=value_cache.to(dtype).to(device),
        query_start_loc=loc.to(device),
        seq_lens=torch.tensor([s for _, s in requests], dtype=torch.int32).to(device),
        block_tables=tables.to(device),
        max_query_len=max(q_lens),
        max_seq_len=max(s for _, s in requests),
        scale=head_dim**-0.5,
    )


def reference_attention(b: Batch) -> torch.Tensor:
    """One request at a time, in float32: gather the context, causal softmax."""
    query, kc, vc = b.query.float().cpu(), b.key_cache.float().cpu(), b.value_cache.float().cpu()
    loc, lens, tables = b.query_start_loc.cpu(), b.seq_lens.cpu(), b.block_tables.cpu()
    group = query.shape[1] // kc.shape[2]
    out = torch.zeros_like(query)
    for r in range(lens.shape[0]):
        start, end, seq_len = int(loc[r]), int(loc[r + 1]), int(lens[r])
        blocks = tables[r, : math.ceil(seq_len / BLOCK_SIZE)].long()
        # [seq_len, Hq, D] after expanding each kv head to its group of query heads
        k = kc[blocks].flatten(0, 1)[:seq_len].repeat_interleave(group, dim=1)
        v = vc[blocks].flatten(0, 1)[:seq_len].repeat_interleave(group, dim=1)
        q = query[start:end]
        scores = torch.einsum("qhd,khd->hqk", q, k) * b.scale
        q_pos = torch.arange(seq_len - (end - start), seq_len)
        causal = torch.arange(seq_len)[None, :] <= q_pos[:, None]
        scores = scores.masked_fill(~causal, float("-inf"))
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    return out


def run_paged_attention(b: Batch) -> torch.Tensor:
    from rsllm.kernels.attention import paged_attention

    return paged_attention(
        b.query,
        b.key_cache,
        b.value_cache,
        b.query_start_loc,
        b.seq_lens,
        b.block_tables,
        b.scale,
        b.max_query_len,
        b.max_seq_len,
    )


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.dtype == dtype
    torch.testing.assert_close(out.float().cpu(), ref, **TOLERANCE[dtype])


DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
groups = pytest.mark.parametrize("group", [1, 4, 8], ids=lambda g: f"gqa{g}")

# (q_len, seq_len) per request.
BATCHES = {
    "one-token": [(1, 1)],
    # Decode at block boundaries and across many blocks.
    "decode": [(1, 1), (1, 15), (1, 16), (1, 17), (1, 33), (1, 250)],
    "prefill": [(37, 37)],
    # Chunked prefill / prefix hits: queries are the last q_len of the context.
    "chunked": [(20, 52), (16, 16), (3, 130)],
    # Decodes mixed with prefills, as a continuous-batching step has them.
    "mixed": [(1, 45), (30, 30), (1, 17), (5, 64), (1, 1)],
}


@dtypes
@groups
@pytest.mark.parametrize("kind", list(BATCHES))
def test_paged_attention_equals_reference(device, kind, group, dtype):
    if device is None:
        return
    if not supports(device, dtype):
        pytest.skip("bf16 is checked on a GPU only")
    batch = make_batch(BATCHES[kind], group, head_dim=32, dtype=dtype, device=device)
    assert_close(run_paged_attention(batch), reference_attention(batch), dtype)


@pytest.mark.parametrize("head_dim", [48, 64, 128])
def test_paged_attention_head_dims(device, head_dim):
    """A non-power-of-two head dim is padded and masked; 128 is Llama's."""
    if device is None:
        return
    for kind in ("mixed", "decode"):
        batch = make_batch(BATCHES[kind], 4, head_dim, torch.float32, device, seed=1)
        assert_close(run_paged_attention(batch), reference_attention(batch), torch.float32)


@dtypes
@pytest.mark.parametrize("num_splits", [1, 2, 5, 9])
def test_decode_splits_equal_reference(device, num_splits, dtype):
    """Flash-decoding: splitting the context across programs does not change the result,
    including splits that are empty for the shorter contexts."""
    if device is None:
        return
    if not supports(device, dtype):
        pytest.skip("bf16 is checked on a GPU only")
    from rsllm.kernels.decode_attention import paged_decode_attention

    batch = make_batch(BATCHES["decode"] + [(1, 700)], 4, 32, dtype, device, seed=2)
    out = torch.empty_like(batch.query)
    paged_decode_attention(
        batch.query,
        batch.key_cache,
        batch.value_cache,
        batch.query_start_loc,
        batch.seq_lens,
        batch.block_tables,
        batch.scale,
        batch.max_seq_len,
        out,
        num_splits=num_splits,
    )
    assert_close(out, reference_attention(batch), dtype)


def test_decode_split_heuristic(device):
    """Few programs and a long context get several splits; many programs get one."""
    if device is None:
        return
    from rsllm.kernels.decode_attention import choose_num_splits

    assert choose_num_splits(1, 1, 4096, device) > 1
    assert choose_num_splits(1, 1, 100, device) == 1
    assert choose_num_splits(4096, 8, 4096, device) == 1


@dtypes
def test_store_kv_writes_slots(device, dtype):
    """Each token lands at its slot, from strided views of a fused qkv; -1 is skipped."""
    if device is None:
        return
    if not supports(device, dtype):
        pytest.skip("bf16 is checked on a GPU only")
    from rsllm.kernels.attention import store_kv

    gen = torch.Generator().manual_seed(3)
    num_tokens, heads, head_dim, num_blocks = 21, 3, 32, 6
    # [T, (Hq + 2 Hkv) * D] like a fused projection; key and value are views into it.
    qkv = torch.randn((num_tokens, (4 + 2 * heads) * head_dim), generator=gen).to(dtype)
    key = qkv[:, 4 * head_dim : (4 + heads) * head_dim].view(num_tokens, heads, head_dim)
    value = qkv[:, (4 + heads) * head_dim :].view(num_tokens, heads, head_dim)
    slots = torch.randperm(num_blocks * BLOCK_SIZE, generator=gen)[:num_tokens]
    slots[5] = -1
    shape = (num_blocks, BLOCK_SIZE, heads, head_dim)
    key_cache = torch.zeros(shape, dtype=dtype)
    value_cache = torch.zeros(shape, dtype=dtype)
    qkv, key_cache, value_cache = (t.to(device) for t in (qkv, key_cache, value_cache))
    key = qkv[:, 4 * head_dim : (4 + heads) * head_dim].view(num_tokens, heads, head_dim)
    value = qkv[:, (4 + heads) * head_dim :].view(num_tokens, heads, head_dim)
    store_kv(key, value, key_cache, value_cache, slots.to(device))

    expect_k = torch.zeros(shape, dtype=dtype).view(-1, heads, head_dim)
    expect_v = torch.zeros(shape, dtype=dtype).view(-1, heads, head_dim)
    live = slots >= 0
    expect_k[slots[live]] = key.cpu()[live]
    expect_v[slots[live]] = value.cpu()[live]
    assert torch.equal(key_cache.cpu().view(-1, heads, head_dim), expect_k)
    assert torch.equal(value_cache.cpu().view(-1, heads, head_dim), expect_v)


@pytest.mark.parametrize("group", [1, 8], ids=lambda g: f"gqa{g}")
def test_store_then_attend(device, group):
    """A step as the model runs it: store the new tokens' K/V, then attend over the cache;
    the context's earlier tokens were stored by earlier steps."""
    if device is None:
        return
    from rsllm.kernels.attention import store_kv

    requests = [(1, 40), (25, 25), (7, 50)]
    batch = make_batch(requests, group, 32, torch.float32, device, seed=4)
    gen = torch.Generator().manual_seed(5)
    new_k = torch.randn((batch.query.shape[0], NUM_KV_HEADS, 32), generator=gen).to(device)
    new_v = torch.randn((batch.query.shape[0], NUM_KV_HEADS, 32), generator=gen).to(device)
    slots = []
    for r, (q_len, seq_len) in enumerate(requests):
        for pos in range(seq_len - q_len, seq_len):
            block = int(batch.block_tables[r, pos // BLOCK_SIZE])
            slots.append(block * BLOCK_SIZE + pos % BLOCK_SIZE)
    slot_mapping = torch.tensor(slots, dtype=torch.int64, device=device)
    store_kv(new_k, new_v, batch.key_cache, batch.value_cache, slot_mapping)
    assert torch.equal(batch.key_cache.view(-1, NUM_KV_HEADS, 32)[slot_mapping], new_k)
    assert_close(run_paged_attention(batch), reference_attention(batch), torch.float32)


def test_rejects_bad_shapes(device):
    if device is None:
        return
    from rsllm.kernels.attention import paged_attention

    batch = make_batch([(1, 5)], 1, 32, torch.float32, device)
    three_heads = torch.randn((1, 3, 32), device=device)
    with pytest.raises(ValueError, match="multiple"):
        paged_attention(
            three_heads,
            batch.key_cache,
            batch.value_cache,
            batch.query_start_loc,
            batch.seq_lens,
            batch.block_tables,
            batch.scale,
            1,
            5,
        )


@pytest.mark.parametrize("kind", ["decode", "chunked", "mixed"])
def test_equals_model_reference_backend(device, kind):
    """The kernels and the model's torch reference (`rsllm.model.attention`) agree on the
    same batch, so the engine gives the same results on either backend."""
    if device is None:
        return
    from rsllm.model import attention as reference

    batch = make_batch(BATCHES[kind], 4, 32, torch.float32, device, seed=6, unowned=0.0)
    args = (
        batch.query,
        batch.key_cache,
        batch.value_cache,
        batch.query_start_loc,
        batch.seq_lens,
        batch.block_tables,
        batch.scale,
        batch.max_query_len,
        batch.max_seq_len,
    )
    assert_close(
        run_paged_attention(batch), reference.paged_attention(*args).float(), torch.float32
    )
