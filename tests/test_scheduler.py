"""The scheduler through `rsllm._core.EngineCore`: the step's arrays, stop conditions,
preemption, prefix caching, abort, errors, and that the GIL is released."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
import torch

from rsllm import InvalidRequestError, UnknownRequestError
from rsllm._core import EngineCore

EOS = 0


def prompt(n: int, seed: int = 0) -> list[int]:
    return [1 + (i * 31 + seed * 7) % 1000 for i in range(n)]


def step(core: EngineCore, token: int = 5) -> tuple[object, list]:
    out = core.schedule()
    sampled = np.full(len(out.logits_indices), token, dtype=np.int32)
    return out, core.update(sampled)


def test_first_step_arrays_have_the_batch_table_dtypes_and_shapes():
    core = EngineCore(num_blocks=32, block_size=4)
    core.add_request("a", prompt(6), max_tokens=3)
    core.add_request("b", np.array(prompt(9, 1), dtype=np.int64), max_tokens=3)
    out = core.schedule()
    assert out.req_ids == ["a", "b"]
    assert (out.num_reqs, out.total_num_scheduled_tokens) == (2, 15)
    assert (out.max_query_len, out.max_seq_len) == (9, 9)
    expect = {
        "input_ids": (np.int32, (15,)),
        "positions": (np.int32, (15,)),
        "slot_mapping": (np.int64, (15,)),
        "query_start_loc": (np.int32, (3,)),
        "seq_lens": (np.int32, (2,)),
        "block_tables": (np.int32, (2, 3)),
        "logits_indices": (np.int32, (2,)),
        "sampling_mask": (np.bool_, (2,)),
        "num_computed_tokens": (np.int32, (2,)),
        "num_scheduled_tokens": (np.int32, (2,)),
        "num_cached_tokens": (np.int32, (2,)),
    }
    for name, (dtype, shape) in expect.items():
        arr = getattr(out, name)
        assert arr.dtype == dtype and arr.shape == shape, name
        assert arr.flags.owndata and arr.flags.c_contiguous, name
        # torch wraps the numpy memory, no copy.
        assert torch.from_numpy(arr).data_ptr() == arr.ctypes.data, name
    assert out.input_ids.tolist() == prompt(6) + prompt(9, 1)
    assert out.positions.tolist() == list(range(6)) + list(range(9))
    assert out.query_start_loc.tolist() == [0, 6, 15]
    assert out.seq_lens.tolist() == [6, 9]
    assert out.logits_indices.tolist() == [5, 14]
    a_blocks, b_blocks = out.block_tables.tolist()
    assert a_blocks[2] == 0  # padding: the null block
    slots = [a_blocks[p // 4] * 4 + p % 4 for p in range(6)]
    slots += [b_blocks[p // 4] * 4 + p % 4 for p in range(9)]
    assert out.slot_mapping.tolist() == slots
    rows = core.update(np.array([7, 8], dtype=np.int32))
    assert [tuple(r) for r in rows] == [("a", 7, False, None, None), ("b", 8, False, None, None)]
    assert rows[0].request_id == "a" and rows[0].token_id == 7 and not rows[0].finished
    out, _ = step(core)
    assert out.num_scheduled_tokens.tolist() == [1, 1]
    assert out.num_computed_tokens.tolist() == [6, 9]
    assert out.input_ids.tolist() == [7, 8]
    assert core.get_output_token_ids("a") == [7, 5]
    assert core.get_num_computed_tokens("b") == 10


def test_stop_conditions():
    core = EngineCore(num_blocks=64, block_size=4, max_model_len=12)
    core.add_request("eos", prompt(3), max_tokens=50, eos_token_ids=[EOS])
    core.add_request("min", prompt(3, 1), max_tokens=50, min_tokens=2, eos_token_ids=[EOS])
    core.add_request("stop", prompt(3, 2), max_tokens=50, stop_token_ids=[EOS])
    core.add_request("ign", prompt(3, 3), max_tokens=2, eos_token_ids=[EOS], ignore_eos=True)
    core.add_request("mml", prompt(10, 4), max_tokens=50)
    _, rows = step(core, token=EOS)
    finished = {r.request_id: (r.finish_reason, r.stop_reason) for r in rows if r.finished}
    assert finished == {"eos": ("stop", None), "stop": ("stop", EOS)}
    _, rows = step(core, token=EOS)
    finished = {r.request_id: (r.finish_reason, r.stop_reason) for r in rows if r.finished}
    # min_tokens=2 reached; ignore_eos stops at max_tokens; 10 + 2 = max_model_len.
    assert finished == {"min": ("stop", None), "ign": ("length", None), "mml": ("length", None)}
    assert not core.has_unfinished_requests()
    assert core.stats()["free_blocks"] == 63


def test_chunked_prefill_and_budget():
    core = EngineCore(num_blocks=64, block_size=4, max_num_batched_tokens=16)
    core.add_request("long", prompt(40), max_tokens=2)
    core.add_request("short", prompt(3, 1), max_tokens=2)
    chunks = []
    while core.has_unfinished_requests():
        out, _ = step(core)
        assert out.total_num_scheduled_tokens <= 16
        chunks.append(dict(zip(out.req_ids, out.num_scheduled_tokens.tolist(), strict=True)))
    assert chunks[:3] == [{"long": 16}, {"long": 16}, {"long": 8, "short": 3}]


def test_without_chunked_prefill_prompts_wait_and_long_ones_are_rejected():
    core = EngineCore(
        num_blocks=128,
        block_size=4,
        max_num_batched_tokens=64,
        max_model_len=64,
        enable_chunked_prefill=False,
    )
    core.add_request("a", prompt(40), max_tokens=4)
    core.add_request("b", prompt(30, 1), max_tokens=4)
    out, _ = step(core)
    assert out.req_ids == ["a"]
    out, _ = step(core)
    assert out.req_ids == ["a", "b"]
    with pytest.raises(InvalidRequestError, match="max_num_batched_tokens"):
        EngineCore(num_blocks=8, max_num_batched_tokens=16, enable_chunked_prefill=False)


def test_prefix_cache_reuses_exactly_the_shared_full_blocks():
    core = EngineCore(num_blocks=64, block_size=4)
    shared = prompt(10)  # two full blocks and two tokens
    core.add_request("a", [*shared, 100, 101, 102], max_tokens=1)
    first, _ = step(core)
    core.add_request("b", [*shared, 200, 201], max_tokens=1)
    out, _ = step(core)
    assert out.num_computed_tokens.tolist() == [8]
    assert out.num_cached_tokens.tolist() == [8]
    assert out.block_tables[0, :2].tolist() == first.block_tables[0, :2].tolist()
    assert out.block_tables[0, 2] != first.block_tables[0, 2]
    stats = core.stats()
    assert (stats["prefix_cache_queries"], stats["prefix_cache_hits"]) == (13 + 12, 8)
    # Another salt, or caching off, shares nothing.
    core.add_request("c", [*shared, 200, 201], max_tokens=1, cache_salt="tenant-2")
    assert step(core)[0].num_computed_tokens.tolist() == [0]
    off = EngineCore(num_blocks=64, block_size=4, enable_prefix_caching=False)
    for rid in ("a", "b"):
        off.add_request(rid, [*shared, 7], max_tokens=1)
    out, _ = step(off)
    assert out.num_computed_tokens.tolist() == [0, 0]


def test_parallel_siblings_share_prompt_blocks_in_the_same_step():
    core = EngineCore(num_blocks=64, block_size=4)
    p = prompt(18)
    for i in range(3):
        core.add_request(f"{i}_req", p, max_tokens=2)
    out = core.schedule()
    assert out.num_scheduled_tokens.tolist() == [18, 2, 2]
    tables = out.block_tables.tolist()
    assert tables[1][:4] == tables[0][:4] == tables[2][:4]
    assert len({t[4] for t in tables}) == 3
    # Each token's KV slot is written once even though the blocks are shared.
    assert len(set(out.slot_mapping.tolist())) == 22
    assert core.stats()["blocks_in_use"] == 4 + 3
    core.update([1, 2, 3])
    core._check_invariants()


def test_preemption_frees_blocks_and_recomputes_with_outputs_kept():
    core = EngineCore(num_blocks=7, block_size=2, enable_prefix_caching=False)
    core.add_request("a", prompt(4), max_tokens=4)
    core.add_request("b", prompt(4, 1), max_tokens=4)
    preempted = []
    while core.has_unfinished_requests():
        out, _ = step(core)
        preempted += out.preempted_req_ids
        core._check_invariants()
    assert preempted == ["b"]
    assert core.stats()["num_preemptions"] == 1
    assert core.stats()["free_blocks"] == 6


def test_priority_policy_orders_and_preempts_by_priority():
    core = EngineCore(num_blocks=5, block_size=2, policy="priority", enable_prefix_caching=False)
    core.add_request("low", prompt(4), max_tokens=3, priority=5)
    core.add_request("high", prompt(3, 1), max_tokens=4, priority=-1)
    out, _ = step(core)
    assert out.req_ids == ["high", "low"]
    out, _ = step(core)
    assert out.preempted_req_ids == ["low"]
    assert core.num_running == 1 and core.num_waiting == 1


def test_abort_in_any_state_frees_blocks_and_is_reported_once():
    core = EngineCore(num_blocks=64, block_size=4, max_num_batched_tokens=8)
    core.add_request("run", prompt(3), max_tokens=9)
    core.add_request("chunk", prompt(20, 1), max_tokens=9)
    core.add_request("wait", prompt(5, 2), max_tokens=9)
    step(core)
    core.abort_request("wait")
    core.abort_request("chunk")
    out = core.schedule()
    assert out.finished_req_ids == ["wait", "chunk"]
    core.abort_request("run")  # between schedule and update: its token is dropped
    assert core.update([5]) == []
    assert core.schedule().finished_req_ids == ["run"]
    assert core.stats()["free_blocks"] == 63
    with pytest.raises(UnknownRequestError, match="run"):
        core.abort_request("run")
    with pytest.raises(KeyError):
        core.get_output_token_ids("run")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt_token_ids": []}, "empty prompt"),
        ({"prompt_token_ids": [1, -2]}, "-2"),
        ({"prompt_token_ids": [1, 2**40]}, "2\\*\\*31"),
        ({"prompt_token_ids": [1, 2**70]}, "2\\*\\*31"),
        ({"prompt_token_ids": list(range(1, 65))}, "max_model_len"),
        ({"prompt_token_ids": [1], "max_tokens": 0}, "max_tokens"),
        ({"prompt_token_ids": [1], "min_tokens": 9}, "min_tokens"),
        ({"prompt_token_ids": [1], "eos_token_ids": [-1]}, "eos_token_ids"),
        ({"prompt_token_ids": list(range(1, 40)), "max_tokens": 20}, "KV blocks"),
    ],
)
def test_invalid_requests_raise_invalid_request_error(kwargs, match):
    core = EngineCore(num_blocks=9, block_size=4, max_model_len=64)  # 8 blocks = 32 tokens
    args = {"max_tokens": 1, **kwargs}
    with pytest.raises(InvalidRequestError, match=match):
        core.add_request("x", args.pop("prompt_token_ids"), **args)
    assert not core.has_unfinished_requests()


def test_invalid_config_and_call_order():
    for kwargs in (
        {"num_blocks": 1},
        {"num_blocks": 8, "block_size": 0},
        {"num_blocks": 8, "max_num_seqs": -1},
        {"num_blocks": 8, "policy": "lifo"},
    ):
        with pytest.raises(InvalidRequestError):
            EngineCore(**kwargs)
    core = EngineCore(num_blocks=8, block_size=4)
    core.add_request("a", [1, 2], max_tokens=2)
    with pytest.raises(InvalidRequestError, match="already in use"):
        core.add_request("a", [1, 2], max_tokens=2)
    core.schedule()
    with pytest.raises(InvalidRequestError, match="1 requests"):
        core.update([1, 2])
    with pytest.raises(InvalidRequestError, match="before update"):
        core.schedule()
    with pytest.raises(TypeError):
        core.update("12")
    assert len(core.update([3])) == 1


def check_step(core: EngineCore, out, tokens: dict[str, list[int]], cfg: dict) -> None:
    """The batch invariants, checked from Python against our own record of tokens."""
    bs = cfg["block_size"]
    r = out.num_reqs
    assert out.total_num_scheduled_tokens <= cfg["max_num_batched_tokens"]
    assert r <= cfg["max_num_seqs"]
    assert len(set(out.req_ids)) == r
    slots = out.slot_mapping.tolist()
    assert len(set(slots)) == len(slots), "a KV slot is written twice in one step"
    qsl = out.query_start_loc.tolist()
    assert qsl[0] == 0 and qsl[-1] == len(slots)
    ids, pos = out.input_ids.tolist(), out.positions.tolist()
    sampling = out.sampling_mask.tolist()
    for i, rid in enumerate(out.req_ids):
        start = int(out.num_computed_tokens[i])
        n = int(out.num_scheduled_tokens[i])
        assert qsl[i + 1] - qsl[i] == n > 0
        assert int(out.seq_lens[i]) == start + n
        assert pos[qsl[i] : qsl[i + 1]] == list(range(start, start + n))
        assert ids[qsl[i] : qsl[i + 1]] == tokens[rid][start : start + n]
        assert sampling[i] == (start + n == len(tokens[rid]))
        table = out.block_tables[i].tolist()
        for row in range(qsl[i], qsl[i + 1]):
            block = table[pos[row] // bs]
            assert block != 0 and slots[row] == block * bs + pos[row] % bs
    expected = [qsl[i + 1] - 1 for i in range(r) if sampling[i]]
    assert out.logits_indices.tolist() == expected
    core._check_invariants()


@pytest.mark.parametrize("seed", range(6))
def test_random_workload_keeps_every_invariant(seed):
    rng = np.random.default_rng(seed)
    chunked = bool(seed % 2)
    cfg = {
        "num_blocks": int(rng.integers(12, 60)),
        "block_size": int(rng.choice([1, 2, 4, 16])),
        "max_num_seqs": int(rng.integers(1, 8)),
        "max_num_batched_tokens": int(rng.integers(8, 64)) if chunked else 96,
        "max_model_len": 96,
        "enable_prefix_caching": seed % 3 != 0,
        "enable_chunked_prefill": chunked,
        "policy": "priority" if seed >= 3 else "fcfs",
    }
    core = EngineCore(**cfg)
    shared = [int(t) for t in rng.integers(1, 500, 64)]
    tokens: dict[str, list[int]] = {}
    prompt_len: dict[str, int] = {}
    live: set[str] = set()
    n_added = 0

    def add(k: int) -> None:
        nonlocal n_added
        n = int(rng.integers(1, 40))
        p = shared[:n] if rng.random() < 0.5 else [int(t) for t in rng.integers(1, 500, n)]
        max_tokens = int(rng.integers(1, 20))
        for _ in range(k):
            rid = f"r{n_added}"
            n_added += 1
            try:
                core.add_request(
                    rid,
                    p,
                    max_tokens=max_tokens,
                    eos_token_ids=[EOS],
                    priority=int(rng.integers(0, 3)),
                )
            except InvalidRequestError:
                assert -(-min(n + max_tokens, 96) // cfg["block_size"]) >= cfg["num_blocks"]
                continue
            tokens[rid] = list(p)
            prompt_len[rid] = n
            live.add(rid)

    def one_step() -> None:
        out = core.schedule()
        check_step(core, out, tokens, cfg)
        assert set(out.finished_req_ids).isdisjoint(live)
        sampled = rng.integers(0, 30, len(out.logits_indices)).astype(np.int32)
        rows = core.update(sampled)
        sampling_ids = [rid for rid, s in zip(out.req_ids, out.sampling_mask, strict=True) if s]
        assert [r.request_id for r in rows] == sampling_ids
        for row in rows:
            tokens[row.request_id].append(row.token_id)
            if row.finished:
                live.remove(row.request_id)
                if row.finish_reason == "stop":
                    assert row.token_id == EOS
        for rid in live:
            assert core.get_output_token_ids(rid) == tokens[rid][prompt_len[rid] :]

    for _ in range(150):
        u = rng.random()
        if u < 0.25:
            add(int(rng.integers(1, 3)))
        elif u < 0.32 and live:
            rid = sorted(live)[int(rng.integers(0, len(live)))]
            core.abort_request(rid)
            live.remove(rid)
        else:
            one_step()
    steps = 0
    while core.has_unfinished_requests():
        steps += 1
        assert steps < 3000, "requests never finish"
        one_step()
    assert not live
    stats = core.stats()
    assert stats["free_blocks"] == cfg["num_blocks"] - 1
    assert stats["blocks_in_use"] == 0
    assert core.num_running == core.num_waiting == 0


def test_schedule_releases_the_gil():
    """Another Python thread keeps running while one long `schedule()` works."""
    n = 40000
    core = EngineCore(
        num_blocks=n * 5 + 1,
        block_size=16,
        max_num_seqs=n,
        max_num_batched_tokens=n * 64,
        max_model_len=1024,
    )
    rng = np.random.default_rng(0)
    for i in range(n):
        core.add_request(f"r{i}", rng.integers(1, 30000, 64), max_tokens=8)
    ticks: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())

    # A 1 ms switch interval: with the GIL held the spinner could run at most 1 ms into
    # the call, so a call of 10 ms (the 40k-request schedule takes ~30 ms) is long enough
    # to tell, however fast the machine.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    thread = threading.Thread(target=spin)
    thread.start()
    try:
        time.sleep(0.02)
        t0 = time.perf_counter()
        out = core.schedule()
        t1 = time.perf_counter()
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert out.num_reqs == n
    assert t1 - t0 > 0.01, "schedule() too short to tell"
    # With the GIL held, the spinner could run only around the call's edges (one
    # switch interval); ticks well inside the call prove it was released.
    lo, hi = t0 + 0.25 * (t1 - t0), t0 + 0.85 * (t1 - t0)
    inside = sum(lo <= t <= hi for t in ticks)
    assert inside > 10, f"{inside} ticks in the middle of a {t1 - t0:.3f} s call"
