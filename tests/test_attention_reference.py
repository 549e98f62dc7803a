"""The torch reference paged attention equals a naive per-request attention over the
contiguous K/V, for mixed batches: decodes (few and many), prefills with and without a
cached prefix, chunks, GQA, blocks scattered in the cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rsllm.errors import InvalidRequestError
from rsllm.model.attention import paged_attention, store_kv


def naive(q, k, v, q_len, seq_len, scale):
    """q [q_len, Hq, D], k/v [seq_len, Hkv, D] -> [q_len, Hq, D], causal on the last q_len."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, 1).float()
    v = v.repeat_interleave(group, 1).float()
    s = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    pos = torch.arange(seq_len - q_len, seq_len)[:, None]
    s = s.masked_fill(torch.arange(seq_len)[None, :] > pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v)


def run_case(q_lens, seq_lens, dtype, hq=6, hkv=2, d=16, bs=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    num_blocks = 2 + sum(-(-s // bs) for s in seq_lens) + 5
    free = list(rng.permutation(np.arange(1, num_blocks)))
    kc = torch.zeros(num_blocks, bs, hkv, d, dtype=dtype)
    vc = torch.zeros_like(kc)
    tables, ks, vs, slots_new, qsl = [], [], [], [], [0]
    width = max(-(-s // bs) for s in seq_lens)
    for q_len, seq_len in zip(q_lens, seq_lens, strict=True):
        blocks = [int(free.pop()) for _ in range(-(-seq_len // bs))]
        tables.append(blocks + [0] * (width - len(blocks)))
        k = torch.randn(seq_len, hkv, d, generator=gen).to(dtype)
        v = torch.randn(seq_len, hkv, d, generator=gen).to(dtype)
        p = np.arange(seq_len)
        slots = torch.from_numpy(np.asarray(blocks)[p // bs] * bs + p % bs)
        # the cached prefix is already in the cache; the new tokens are stored by store_kv
        cached = seq_len - q_len
        store_kv(k[:cached], v[:cached], kc, vc, slots[:cached])
        slots_new.append(slots[cached:])
        ks.append(k)
        vs.append(v)
        qsl.append(qsl[-1] + q_len)
    key_new = torch.cat([k[s - q :] for k, q, s in zip(ks, q_lens, seq_lens, strict=True)])
    val_new = torch.cat([v[s - q :] for v, q, s in zip(vs, q_lens, seq_lens, strict=True)])
    store_kv(key_new, val_new, kc, vc, torch.cat(slots_new))
    query = torch.randn(qsl[-1], hq, d, generator=gen).to(dtype)
    scale = 1 / math.sqrt(d)
    out = paged_attention(
        query,
        kc,
        vc,
        torch.tensor(qsl, dtype=torch.int32),
        torch.tensor(seq_lens, dtype=torch.int32),
        torch.tensor(tables, dtype=torch.int32),
        scale,
        max(q_lens),
        max(seq_lens),
    )
    for r, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens, strict=True)):
        ref = naive(query[qsl[r] : qsl[r + 1]], ks[r], vs[r], q_len, seq_len, scale)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out[qsl[r] : qsl[r + 1]].float(), ref, atol=tol, rtol=tol)


CASES = {
    "one_prefill": ([13], [13]),
    "one_decode": ([1], [9]),
    "few_decodes": ([1, 1, 1], [5, 17, 8]),
    "many_decodes": ([1] * 7, [1, 4, 5, 16, 23, 9, 30]),
    "prefix_hit_and_chunks": ([6, 3, 11], [10, 3, 20]),
    "mixed": ([1, 7, 1, 1, 5, 1, 1, 1], [12, 7, 3, 40, 9, 4, 16, 2]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_attention_equals_naive(case, dtype):
    run_case(*CASES[case], dtype)


def test_qwen3_like_heads_no_gqa():
    run_case([1, 1, 1, 1, 4], [7, 3, 19, 5, 4], torch.float32, hq=4, hkv=4, d=32)


def test_rejects_seq_len_beyond_block_table():
    kc = torch.zeros(4, 4, 1, 8)
    with pytest.raises(InvalidRequestError):
        paged_attention(
            torch.zeros(1, 1, 8),
            kc,
            kc,
            torch.tensor([0, 1], dtype=torch.int32),
            torch.tensor([9], dtype=torch.int32),
            torch.tensor([[1, 2]], dtype=torch.int32),
            1.0,
            1,
            9,
        )
