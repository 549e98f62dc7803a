"""Micro-benchmark of the core's scheduler: rsllm's Rust `EngineCore` beside the pure-
Python reference (`py_scheduler.py`, the same rules), measured in the same run.

Workloads (issue 3; block size 16, an 8192-token budget):
- decode: N running requests whose 512-token prompts are already prefilled (in one
  untimed step), one token per request per step; the cost of `schedule()` + `update()`
  per step, including the numpy arrays handed to Python and the per-request results.
- prefix admission: 1024 requests of 512 tokens sharing a 256-token prefix, from the
  first `add_request` until every request has sampled its first token.

    python benches/core/bench_scheduler.py            # prints the table, writes JSON
    pytest benches/core/bench_scheduler.py            # the same cases, pytest-benchmark

vLLM's own scheduler is not run here; the figures the issue quotes for it (2-core
machines: 0.57 ms/step at 64 running, 2.3 ms at 256, 12-13 ms at 1024, 130-140 ms for
the admission) are context from another run, not a measurement of this one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from py_scheduler import PyScheduler

from rsllm._core import EngineCore

SIZES = (64, 256, 1024, 4096)
PROMPT_LEN = 512
SHARED_LEN = 256
BLOCK_SIZE = 16
BUDGET = 8192
ADMIT_N = 1024
TARGET_US = {256: 115.0, 1024: 600.0}
TARGET_ADMIT_MS = 10.0
RESULTS = Path(__file__).resolve().parents[1] / "results" / "core_scheduler.json"

Core = EngineCore | PyScheduler


def make_core(impl: str, num_blocks: int, max_num_seqs: int, budget: int = BUDGET) -> Core:
    cls = EngineCore if impl == "rsllm" else PyScheduler
    return cls(
        num_blocks=num_blocks,
        block_size=BLOCK_SIZE,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=budget,
        max_model_len=8192,
    )


def logits_count(out: object) -> int:
    indices = out["logits_indices"] if isinstance(out, dict) else out.logits_indices
    return len(indices)


def one_step(core: Core, ones: np.ndarray) -> int:
    """schedule + update with token 1 for every sampling request; returns how many."""
    out = core.schedule()
    s = logits_count(out)
    core.update(ones[:s])
    return s


def decode_setup(impl: str, n: int, decode_steps: int, seed: int = 0) -> Callable[[], int]:
    """N requests with 512-token prompts, prefilled in one untimed step (a budget that
    holds them all, so every context is 512 tokens when timing starts; a decode step
    schedules N <= 4096 tokens, well inside any budget); returns the timed step."""
    rng = np.random.default_rng(seed)
    blocks_per_req = -(-(PROMPT_LEN + decode_steps + 16) // BLOCK_SIZE)
    budget = max(BUDGET, n * PROMPT_LEN)
    core = make_core(impl, n * blocks_per_req + 1, n, budget)
    for i in range(n):
        prompt = rng.integers(1, 32000, PROMPT_LEN).tolist()
        core.add_request(f"req-{i}", prompt, max_tokens=7000)
    ones = np.ones(max(n, 1), dtype=np.int32)
    assert one_step(core, ones) == n

    def step() -> int:
        return one_step(core, ones)

    return step


def time_decode(impl: str, n: int, steps: int, repeats: int) -> dict[str, float]:
    step = decode_setup(impl, n, steps * repeats + 4)
    for _ in range(3):
        assert step() == n, "a request was preempted or finished"
    means = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        means.append((time.perf_counter() - t0) / steps)
    return {
        "us_per_step": min(means) * 1e6,
        "us_per_step_median": sorted(means)[repeats // 2] * 1e6,
    }


def admission_prompts(seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    shared = rng.integers(1, 32000, SHARED_LEN).tolist()
    return [
        shared + rng.integers(1, 32000, PROMPT_LEN - SHARED_LEN).tolist() for _ in range(ADMIT_N)
    ]


def run_admission(impl: str, prompts: list[list[int]]) -> dict[str, float]:
    """Add every request and step until each has sampled its first token (max_tokens=1,
    so the count of sampled tokens is the count of prefilled requests)."""
    blocks = ADMIT_N * (PROMPT_LEN // BLOCK_SIZE + 2) + 1
    core = make_core(impl, blocks, ADMIT_N)
    ones = np.ones(ADMIT_N, dtype=np.int32)
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        core.add_request(f"req-{i}", prompt, max_tokens=1)
    t1 = time.perf_counter()
    sampled = steps = 0
    while sampled < ADMIT_N:
        sampled += one_step(core, ones)
        steps += 1
    t2 = time.perf_counter()
    return {
        "total_ms": (t2 - t0) * 1e3,
        "add_ms": (t1 - t0) * 1e3,
        "steps_ms": (t2 - t1) * 1e3,
        "steps": steps,
    }


def time_admission(impl: str, repeats: int) -> dict[str, float]:
    prompts = admission_prompts()
    runs = [run_admission(impl, prompts) for _ in range(repeats)]
    return min(runs, key=lambda r: r["total_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    # The best of many short repeats: robust to other processes sharing the cores.
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    decode: dict[int, dict[str, object]] = {}
    for n in args.sizes:
        rs = time_decode("rsllm", n, steps=max(10, 20000 // n), repeats=args.repeats)
        py = time_decode("python", n, steps=max(2, 2000 // n), repeats=5)
        decode[n] = {
            "rsllm_us_per_step": rs["us_per_step"],
            "rsllm_us_per_step_median": rs["us_per_step_median"],
            "rsllm_ns_per_request_step": rs["us_per_step"] * 1e3 / n,
            "python_us_per_step": py["us_per_step"],
            "speedup": py["us_per_step"] / rs["us_per_step"],
            "target_us": TARGET_US.get(n),
        }
    admit_rs = time_admission("rsllm", args.repeats)
    admit_py = time_admission("python", 2)

    print(
        f"rsllm scheduler benchmark ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"
    )
    print("decode step: schedule + update, 512-token prompts prefilled, 1 token/request/step")
    header = (
        f"{'running':>8} {'rsllm µs/step':>14} {'ns/req-step':>12} "
        f"{'python µs/step':>15} {'speedup':>8} {'target':>8}"
    )
    print(header)
    for n, row in decode.items():
        target = f"{row['target_us']:.0f}" if row["target_us"] else "-"
        print(
            f"{n:>8} {row['rsllm_us_per_step']:>14.1f} {row['rsllm_ns_per_request_step']:>12.0f} "
            f"{row['python_us_per_step']:>15.1f} {row['speedup']:>7.1f}x {target:>8}"
        )
    print(
        f"prefix admission: {ADMIT_N} requests x {PROMPT_LEN} tokens, {SHARED_LEN} shared, "
        f"budget {BUDGET}"
    )
    for name, r in (("rsllm", admit_rs), ("python", admit_py)):
        print(
            f"{name:>8} total {r['total_ms']:8.2f} ms  (add_request {r['add_ms']:7.2f} ms, "
            f"{r['steps']} steps {r['steps_ms']:7.2f} ms)"
        )
    print(
        f"  speedup {admit_py['total_ms'] / admit_rs['total_ms']:.1f}x, "
        f"target <= {TARGET_ADMIT_MS} ms"
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "core_scheduler",
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": {
            "block_size": BLOCK_SIZE,
            "max_num_batched_tokens": BUDGET,
            "prompt_len": PROMPT_LEN,
            "shared_prefix_len": SHARED_LEN,
        },
        "decode": {str(n): row for n, row in decode.items()},
        "prefix_admission": {"rsllm": admit_rs, "python": admit_py, "target_ms": TARGET_ADMIT_MS},
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


# -- pytest-benchmark: `pytest benches/core/bench_scheduler.py` ---------------------------
ROUNDS = 50


def _params() -> list[tuple[str, int]]:
    return [(impl, n) for impl in ("rsllm", "python") for n in SIZES]


try:
    import pytest
except ImportError:  # running as a script without pytest
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize(("impl", "n"), _params())
    def test_decode_step(benchmark, impl, n):
        rounds = ROUNDS if impl == "rsllm" else max(3, ROUNDS * 64 // n // 4)
        step = decode_setup(impl, n, rounds + 8)
        assert step() == n
        benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=2)

    @pytest.mark.parametrize("impl", ["rsllm", "python"])
    def test_prefix_admission(benchmark, impl):
        prompts = admission_prompts()
        rounds = 10 if impl == "rsllm" else 3
        result = benchmark.pedantic(
            run_admission, args=(impl, prompts), rounds=rounds, iterations=1, warmup_rounds=1
        )
        assert result["steps"] > 1


if __name__ == "__main__":
    main()
