"""A random workload of a few hundred requests, with aborts in the middle, finishes, and
afterwards every KV block is free."""

from __future__ import annotations

import random

from rsllm import LLMEngine, SamplingParams
from rsllm.engine.arg_utils import EngineArgs
from rsllm.sampling_params import RequestOutputKind


def test_random_workload_with_aborts_frees_every_block(tiny_llama_builder):
    engine = LLMEngine(
        EngineArgs(
            model=str(tiny_llama_builder(seed=5)),
            dtype="float32",
            max_num_batched_tokens=256,
            max_num_seqs=32,
            kv_cache_memory_bytes=64 * 2 * 16 * 2 * 16 * 2 * 4,  # 64 tiny blocks
        )
    )
    rng = random.Random(11)
    live: set[str] = set()
    finished: set[str] = set()
    aborted: set[str] = set()
    for i in range(300):
        rid = f"r{i}"
        prompt = [rng.randrange(3, 49152) for _ in range(rng.randint(1, 60))]
        params = SamplingParams(
            temperature=rng.choice([0.0, 1.0]),
            max_tokens=rng.randint(1, 12),
            n=rng.choice([1, 1, 2]),
            output_kind=RequestOutputKind.DELTA,
        )
        engine.add_request(rid, {"prompt_token_ids": prompt}, params)
        live.add(rid)
        if i % 7 == 0:
            for out in engine.step():
                if out.finished:
                    finished.add(out.request_id)
                    live.discard(out.request_id)
        if i % 11 == 0 and live:
            victim = rng.choice(sorted(live))
            engine.abort_request(victim)
            aborted.add(victim)
            live.discard(victim)
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished.add(out.request_id)
                live.discard(out.request_id)
        steps += 1
        assert steps < 5000, "the workload must finish"
    assert not live
    assert finished | aborted == {f"r{i}" for i in range(300)}
    assert not finished & aborted
    stats = engine.get_stats()
    assert stats["blocks_in_use"] == 0
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
