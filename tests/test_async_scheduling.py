"""The overlapped engine loop (`async_scheduling`): step N+1 is scheduled and run before
step N's samples reach the core. It must change when the bookkeeping runs, never what is
computed: the same token ids, finish reasons and stop points as the plain loop
(float32), with prefix caching, chunked prefill and preemption, and every block freed."""

from __future__ import annotations

import numpy as np
import pytest

from _workloads import TINY_BLOCK_BYTES, equivalence_prompts
from rsllm import LLM, SamplingParams
from rsllm.errors import InvalidRequestError
from rsllm.sampling_params import StructuredOutputsParams


@pytest.fixture(scope="module")
def tiny_dir(tiny_llama_builder):
    return str(tiny_llama_builder(seed=3))


def _run(model: str, params: list[SamplingParams], **engine_kwargs) -> tuple[list, dict]:
    llm = LLM(model, dtype="float32", seed=0, **engine_kwargs)
    runner = llm.llm_engine.runner
    execute = runner.execute_model
    placeholders = []

    def counting(batch, **kwargs):
        placeholders.append(int((np.asarray(batch.input_ids) < 0).sum()))
        return execute(batch, **kwargs)

    runner.execute_model = counting
    outs = llm.generate(equivalence_prompts(), params, use_tqdm=False)
    # The overlapped loop really decodes from placeholders; the plain loop never does.
    assert (sum(placeholders) > 0) == engine_kwargs.get("async_scheduling", False)
    stats = llm.llm_engine.get_stats()
    assert stats["blocks_in_use"] == 0, "every KV block is free once all requests are done"
    assert not llm.llm_engine.has_unfinished_requests()
    return [[(c.token_ids, c.finish_reason, c.stop_reason) for c in o.outputs] for o in outs], stats


STRESSED = dict(
    enable_prefix_caching=True,
    enable_chunked_prefill=True,
    max_num_batched_tokens=16,
    max_num_seqs=4,
    kv_cache_memory_bytes=14 * TINY_BLOCK_BYTES,
)
PLAIN = dict(
    enable_prefix_caching=False,
    enable_chunked_prefill=False,
    max_num_batched_tokens=4096,
    kv_cache_memory_bytes=256 * TINY_BLOCK_BYTES,
)


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_overlapped_loop_equals_the_plain_loop(tiny_dir, mode):
    if mode == "greedy":
        params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)] * 6
    else:
        params = [
            SamplingParams(
                temperature=0.9, top_p=0.95, seed=100 + i, max_tokens=24, ignore_eos=True
            )
            for i in range(6)
        ]
    reference, _ = _run(tiny_dir, params, **PLAIN)
    overlapped, _ = _run(tiny_dir, params, async_scheduling=True, **PLAIN)
    assert overlapped == reference
    stressed, stats = _run(tiny_dir, params, async_scheduling=True, **STRESSED)
    assert stats["num_preemptions"] > 0, "the tiny KV cache must force preemption"
    assert stats["prefix_cache_hits"] > 0, "the shared prefix must hit the cache"
    assert stressed == reference


def test_stop_tokens_and_max_tokens_finish_at_the_same_token(tiny_dir):
    # Take tokens the plain loop generates and make them stop tokens, so requests stop
    # mid-stream while their next row is already in flight.
    greedy = [SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)] * 6
    first, _ = _run(tiny_dir, greedy, **PLAIN)
    stops = [first[i][0][0][3 + i] for i in range(6)]
    params = [
        SamplingParams(temperature=0, max_tokens=20 if i % 2 else 2 + i, stop_token_ids=[stops[i]])
        for i in range(6)
    ]
    reference, _ = _run(tiny_dir, params, **PLAIN)
    reasons = {c[1] for o in reference for c in o}
    assert reasons == {"stop", "length"}, reasons
    for kwargs in (PLAIN, STRESSED):
        overlapped, _ = _run(tiny_dir, params, async_scheduling=True, **kwargs)
        assert overlapped == reference


def test_stop_strings_finish_at_the_same_token(tiny_dir):
    llm = LLM(tiny_dir, dtype="float32", seed=0, **PLAIN)
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    texts = [o.outputs[0].text for o in llm.generate(equivalence_prompts(), greedy, use_tqdm=False)]
    # A piece of each text from its middle: the request stops there, mid-stream.
    params = [
        SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, stop=[t[len(t) // 2 :][:3]])
        for t in texts
        if len(t) >= 6
    ]
    assert len(params) >= 3
    prompts = [p for p, t in zip(equivalence_prompts(), texts, strict=True) if len(t) >= 6]

    def run(**kwargs) -> list:
        eng = LLM(tiny_dir, dtype="float32", seed=0, **kwargs)
        outs = eng.generate(prompts, params, use_tqdm=False)
        assert eng.llm_engine.get_stats()["blocks_in_use"] == 0
        return [(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].stop_reason) for o in outs]

    reference = run(**PLAIN)
    assert any(r[2] is not None for r in reference), "some request must stop on its string"
    assert run(async_scheduling=True, **PLAIN) == reference
    assert run(async_scheduling=True, **STRESSED) == reference


def test_max_tokens_one_and_two(tiny_dir):
    params = [
        SamplingParams(temperature=0, max_tokens=1 + i % 2, ignore_eos=True) for i in range(6)
    ]
    reference, _ = _run(tiny_dir, params, **PLAIN)
    overlapped, _ = _run(tiny_dir, params, async_scheduling=True, **STRESSED)
    assert overlapped == reference
    assert [len(o[0][0]) for o in overlapped] == [1, 2, 1, 2, 1, 2]


def test_structured_outputs_are_refused(tiny_dir):
    llm = LLM(tiny_dir, dtype="float32", async_scheduling=True)
    params = SamplingParams(structured_outputs=StructuredOutputsParams(choice=["a", "b"]))
    with pytest.raises(InvalidRequestError):
        llm.generate([{"prompt_token_ids": [5, 6, 7]}], params, use_tqdm=False)


def test_abort_while_a_row_is_in_flight(tiny_dir):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompts = equivalence_prompts()[:3]

    def run(abort: bool, **kwargs) -> list[int]:
        engine = LLM(tiny_dir, dtype="float32", seed=0, **kwargs).llm_engine
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, params)
        tokens: dict[str, list[int]] = {}
        steps = 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                tokens[out.request_id] = list(out.outputs[0].token_ids)
            steps += 1
            if abort and steps == 4:
                engine.abort_request(["1"])  # its step-4 row is still in flight
        assert engine.get_stats()["blocks_in_use"] == 0
        return tokens["2"]

    reference = run(False, **PLAIN)
    assert run(True, async_scheduling=True, **PLAIN) == reference
    assert run(True, async_scheduling=True, **STRESSED) == reference
