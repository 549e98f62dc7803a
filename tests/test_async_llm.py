"""AsyncLLM: the engine loop on its own thread, feeding asyncio consumers."""

from __future__ import annotations

import asyncio
import resource
import time

import pytest

from rsllm import AsyncLLM, EngineDeadError, InvalidRequestError, SamplingParams
from rsllm.engine.arg_utils import EngineArgs
from rsllm.sampling_params import RequestOutputKind


@pytest.fixture
def engine(tiny_llama_builder):
    llm = AsyncLLM.from_engine_args(
        EngineArgs(model=str(tiny_llama_builder(seed=9)), dtype="float32")
    )
    yield llm
    llm.shutdown()


def _params(**kw) -> SamplingParams:
    return SamplingParams(temperature=0, ignore_eos=True, output_kind=RequestOutputKind.DELTA, **kw)


async def _collect(llm: AsyncLLM, rid: str, prompt: list[int], **kw) -> list[int]:
    tokens: list[int] = []
    async for out in llm.generate({"prompt_token_ids": prompt}, _params(**kw), rid):
        tokens += out.outputs[0].token_ids
    return tokens


def test_concurrent_streams_match_one_at_a_time(engine):
    prompts = [[5, 6, 7], [100, 200, 300, 400, 500], [42] * 20]

    async def main() -> tuple[list[list[int]], list[list[int]]]:
        together = await asyncio.gather(
            *(_collect(engine, f"a{i}", p, max_tokens=12) for i, p in enumerate(prompts))
        )
        alone = [await _collect(engine, f"b{i}", p, max_tokens=12) for i, p in enumerate(prompts)]
        return list(together), alone

    together, alone = asyncio.run(main())
    assert together == alone
    assert all(len(t) == 12 for t in together)


def test_leaving_the_stream_aborts_and_frees_blocks(engine):
    async def main() -> None:
        gen = engine.generate({"prompt_token_ids": [9] * 40}, _params(max_tokens=400), "x")
        seen = 0
        async for _ in gen:
            seen += 1
            if seen == 3:
                break
        await gen.aclose()
        for _ in range(200):
            stats = engine.get_stats()
            if stats["num_running"] == 0 and stats["blocks_in_use"] == 0:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"request not aborted: {engine.get_stats()}")

    asyncio.run(main())


def test_invalid_request_fails_alone(engine):
    async def main() -> list[int]:
        with pytest.raises(InvalidRequestError):
            await _collect(engine, "bad", [1] * 100_000, max_tokens=4)
        return await _collect(engine, "good", [1, 2, 3], max_tokens=4)

    assert len(asyncio.run(main())) == 4


def test_idle_loop_does_not_spin(engine):
    time.sleep(0.2)
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(1.0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 0.2, f"idle engine used {cpu:.2f} s of CPU in 1 s"


def test_a_dying_loop_fails_every_waiting_request(engine):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    engine.engine.runner.execute_model = broken  # type: ignore[method-assign]

    async def main() -> None:
        with pytest.raises(EngineDeadError, match="simulated device failure"):
            await _collect(engine, "doomed", [1, 2, 3], max_tokens=4)
        assert engine.errored
        with pytest.raises(EngineDeadError):
            await _collect(engine, "after", [1, 2, 3], max_tokens=4)

    asyncio.run(asyncio.wait_for(main(), timeout=30))
