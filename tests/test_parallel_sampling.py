"""Parallel sampling (n > 1) shares the prompt's KV blocks between the n completions."""

from __future__ import annotations

import pytest

from rsllm import LLMEngine, SamplingParams
from rsllm.engine.arg_utils import EngineArgs


@pytest.mark.parametrize("caching", [True, False])
def test_n_completions_share_the_prompt_blocks(tiny_llama_builder, caching):
    engine = LLMEngine(
        EngineArgs(
            model=str(tiny_llama_builder(seed=5)),
            dtype="float32",
            enable_prefix_caching=caching,
        )
    )
    prompt = list(range(100, 164))  # 64 tokens: 4 full blocks of 16
    engine.add_request("r", {"prompt_token_ids": prompt}, SamplingParams(n=4, max_tokens=8, seed=1))
    engine.step()  # the four prompts in one step
    stats = engine.get_stats()
    if caching:
        # The first completion computes the 4 blocks; the other three take the first 3
        # from it (a hit never covers the last prompt token) and compute only the 4th.
        assert stats["blocks_in_use"] == 4 + 3 * 1
        assert stats["prefix_cache_hits"] == 3 * 48
    else:
        assert stats["blocks_in_use"] == 4 * 4
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    (final,) = [o for o in outs if o.finished]
    assert sorted(c.index for c in final.outputs) == [0, 1, 2, 3]
    assert engine.get_stats()["blocks_in_use"] == 0
