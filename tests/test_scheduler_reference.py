"""The Rust scheduler equals the pure-Python reference of the benchmark, step for step.

Same rules mean the same block ids, so every array of every step must match: chunked
prefill, prefix-cache hits (same-step siblings included), eviction order and
preemption all show up in the block tables and slot mappings.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from rsllm._core import EngineCore

_PATH = Path(__file__).resolve().parents[1] / "benches" / "core" / "py_scheduler.py"
_spec = importlib.util.spec_from_file_location("py_scheduler", _PATH)
assert _spec is not None and _spec.loader is not None
py_scheduler = importlib.util.module_from_spec(_spec)
sys.modules["py_scheduler"] = py_scheduler  # dataclasses look their module up there
_spec.loader.exec_module(py_scheduler)

ARRAYS = (
    "input_ids",
    "positions",
    "slot_mapping",
    "query_start_loc",
    "seq_lens",
    "block_tables",
    "logits_indices",
    "sampling_mask",
    "num_computed_tokens",
    "num_scheduled_tokens",
)


@pytest.mark.parametrize("seed", range(5))
def test_rust_and_python_schedulers_agree(seed):
    rng = np.random.default_rng(100 + seed)
    cfg = {
        "num_blocks": int(rng.integers(10, 40)),
        "block_size": int(rng.choice([2, 4, 16])),
        "max_num_seqs": int(rng.integers(2, 8)),
        "max_num_batched_tokens": int(rng.integers(8, 48)),
        "max_model_len": 128,
    }
    rust = EngineCore(**cfg)
    ref = py_scheduler.PyScheduler(**cfg)
    shared = [int(t) for t in rng.integers(1, 100, 64)]
    steps = 0
    n_added = 0
    while steps < 300 and (steps < 100 or rust.has_unfinished_requests()):
        if steps < 100 and rng.random() < 0.3:
            n = int(rng.integers(1, 48))
            p = shared[:n] if rng.random() < 0.6 else [int(t) for t in rng.integers(1, 100, n)]
            max_tokens = int(rng.integers(1, 24))
            if -(-min(n + max_tokens, 128) // cfg["block_size"]) < cfg["num_blocks"]:
                for _ in range(int(rng.integers(1, 3))):
                    rid = f"r{n_added}"
                    n_added += 1
                    rust.add_request(rid, p, max_tokens=max_tokens, eos_token_ids=[0])
                    ref.add_request(rid, p, max_tokens=max_tokens, eos_token_ids=(0,))
        a = rust.schedule()
        b = ref.schedule()
        assert a.req_ids == b["req_ids"]
        assert a.preempted_req_ids == b["preempted_req_ids"]
        for name in ARRAYS:
            np.testing.assert_array_equal(getattr(a, name), b[name], err_msg=name)
        sampled = rng.integers(0, 40, len(a.logits_indices)).astype(np.int32)
        got = [tuple(r) for r in rust.update(sampled)]
        assert got == ref.update(sampled)
        steps += 1
    assert not rust.has_unfinished_requests() and not ref.has_unfinished_requests()
    assert rust.stats()["num_preemptions"] == ref.num_preemptions
