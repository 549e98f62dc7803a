"""Prefix caching, chunked prefill and preemption change how a batch is computed, never
what it computes: output with them on equals output with them off (float32)."""

from __future__ import annotations

import pytest

from _workloads import TINY_BLOCK_BYTES, equivalence_prompts
from rsllm import LLM, SamplingParams


@pytest.fixture(scope="module")
def tiny_dir(tiny_llama_builder):
    return str(tiny_llama_builder(seed=3))


def _run(model: str, params: list[SamplingParams], **engine_kwargs) -> tuple[list, dict]:
    llm = LLM(model, dtype="float32", seed=0, **engine_kwargs)
    outs = llm.generate(equivalence_prompts(), params, use_tqdm=False)
    stats = llm.llm_engine.get_stats()
    assert stats["blocks_in_use"] == 0, "every KV block is free once all requests are done"
    return [[c.token_ids for c in o.outputs] for o in outs], stats


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_output_is_the_same_with_caching_chunking_and_preemption(tiny_dir, mode):
    if mode == "greedy":
        params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)] * 6
    else:
        params = [
            SamplingParams(
                temperature=0.9, top_p=0.95, seed=100 + i, max_tokens=24, ignore_eos=True
            )
            for i in range(6)
        ]
    reference, ref_stats = _run(
        tiny_dir,
        params,
        enable_prefix_caching=False,
        enable_chunked_prefill=False,
        max_num_batched_tokens=4096,
        kv_cache_memory_bytes=256 * TINY_BLOCK_BYTES,
    )
    assert ref_stats["num_preemptions"] == 0
    # A 16-token budget forces chunked prefill; 14 blocks cannot hold six requests of
    # up to ~180 tokens at once, so requests are preempted and recomputed.
    stressed, stats = _run(
        tiny_dir,
        params,
        enable_prefix_caching=True,
        enable_chunked_prefill=True,
        max_num_batched_tokens=16,
        max_num_seqs=4,
        kv_cache_memory_bytes=14 * TINY_BLOCK_BYTES,
    )
    assert stats["num_preemptions"] > 0, "the tiny KV cache must force preemption"
    assert stats["prefix_cache_hits"] > 0, "the shared prefix must hit the cache"
    assert stressed == reference
