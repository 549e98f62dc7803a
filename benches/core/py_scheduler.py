"""A straightforward pure-Python version of the core's scheduler and block pool.

The reference for `bench_scheduler.py` (and the cross-check in
`tests/test_scheduler_reference.py`): the same rules as `rust/scheduler.rs` and
`rust/block_pool.rs` under the FCFS policy, written the way a Python engine would
(nano-vllm's style: lists, dicts, an OrderedDict as the free queue), and handing out
the same numpy arrays. Same rules means same block ids, so a step of either can be
compared array for array.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

ROOT = 0x243F6A8885A308D3


@dataclass
class PyRequest:
    request_id: str
    tokens: list[int]
    num_prompt_tokens: int
    max_tokens: int
    max_model_len: int
    eos_token_ids: frozenset[int]
    root: int
    num_computed_tokens: int = 0
    num_cached_tokens: int | None = None
    block_table: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    num_done: int = 0
    seq: int = 0


class PyBlockPool:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.ref_cnt = [0] * num_blocks
        self.ref_cnt[0] = 1  # the null block
        # Least recently freed first.
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(1, num_blocks))
        self.cached: dict[int, int] = {}  # key -> block
        self.block_key: dict[int, tuple[int, int, tuple[int, ...]]] = {}  # block -> entry

    def _evict(self, b: int) -> None:
        entry = self.block_key.pop(b, None)
        if entry is not None and self.cached.get(entry[0]) == b:
            del self.cached[entry[0]]

    def _keys(self, req: PyRequest, n: int) -> None:
        bs = self.block_size
        while len(req.keys) < n:
            i = len(req.keys)
            parent = req.keys[i - 1] if i else req.root
            req.keys.append(hash((parent, tuple(req.tokens[i * bs : (i + 1) * bs]))))

    def find_cached_prefix(self, req: PyRequest) -> list[int]:
        bs = self.block_size
        hits: list[int] = []
        for i in range((len(req.tokens) - 1) // bs):
            self._keys(req, i + 1)
            b = self.cached.get(req.keys[i])
            parent = req.keys[i - 1] if i else req.root
            tokens = tuple(req.tokens[i * bs : (i + 1) * bs])
            if b is None or self.block_key[b][1:] != (parent, tokens):
                break
            hits.append(b)
        return hits

    def allocate_slots(
        self, req: PyRequest, num_computed: int, num_new: int, hits: list[int]
    ) -> bool:
        bs = self.block_size
        total = num_computed + num_new
        need = max(0, -(-total // bs) - len(req.block_table) - len(hits))
        free_hits = sum(1 for b in hits if self.ref_cnt[b] == 0)
        if need > len(self.free) - free_hits:
            return False
        for b in hits:
            if self.ref_cnt[b] == 0:
                del self.free[b]
            self.ref_cnt[b] += 1
            req.block_table.append(b)
        if hits:
            req.num_done = len(hits)
        for _ in range(need):
            b, _ = self.free.popitem(last=False)
            self._evict(b)
            self.ref_cnt[b] = 1
            req.block_table.append(b)
        full = total // bs
        if full > req.num_done:
            self._keys(req, full)
            for i in range(req.num_done, full):
                key = req.keys[i]
                if key not in self.cached:
                    b = req.block_table[i]
                    parent = req.keys[i - 1] if i else req.root
                    self.cached[key] = b
                    self.block_key[b] = (key, parent, tuple(req.tokens[i * bs : (i + 1) * bs]))
            req.num_done = full
        return True

    def free_blocks(self, req: PyRequest) -> None:
        for b in reversed(req.block_table):
            self.ref_cnt[b] -= 1
            if self.ref_cnt[b] == 0:
                self.free[b] = None
        req.block_table = []
        req.num_done = 0


class PyScheduler:
    """FCFS continuous batching: running first, then waiting; preempt the last admitted."""

    def __init__(
        self,
        *,
        num_blocks: int,
        block_size: int = 16,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        max_model_len: int = 8192,
    ) -> None:
        self.pool = PyBlockPool(num_blocks, block_size)
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.requests: dict[str, PyRequest] = {}
        self.running: list[PyRequest] = []
        self.waiting: deque[PyRequest] = deque()
        self.pending: list[PyRequest] = []
        self.num_preemptions = 0
        self._seq = 0

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        *,
        max_tokens: int,
        eos_token_ids: tuple[int, ...] = (),
    ) -> None:
        if request_id in self.requests or not prompt_token_ids:
            raise ValueError(f"bad request {request_id!r}")
        req = PyRequest(
            request_id,
            list(prompt_token_ids),
            len(prompt_token_ids),
            max_tokens,
            self.max_model_len,
            frozenset(eos_token_ids),
            ROOT,
            seq=self._seq,
        )
        self._seq += 1
        self.requests[request_id] = req
        self.waiting.append(req)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def _preempt(self, req: PyRequest, preempted: list[str]) -> None:
        self.pool.free_blocks(req)
        req.num_computed_tokens = 0
        self.waiting.appendleft(req)
        preempted.append(req.request_id)
        self.num_preemptions += 1

    def schedule(self) -> dict[str, object]:
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[PyRequest, int]] = []
        preempted: list[str] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = min(len(req.tokens) - req.num_computed_tokens, budget)
            if num_new == 0:
                i += 1
                continue
            while True:
                if self.pool.allocate_slots(req, req.num_computed_tokens, num_new, []):
                    scheduled.append((req, num_new))
                    budget -= num_new
                    i += 1
                    break
                victim = self.running.pop()
                self._preempt(victim, preempted)
                if victim is req:
                    break
        while not preempted and budget > 0 and len(self.running) < self.max_num_seqs:
            if not self.waiting:
                break
            req = self.waiting[0]
            hits = self.pool.find_cached_prefix(req)
            num_hit = len(hits) * self.block_size
            num_new = min(len(req.tokens) - num_hit, budget)
            if not self.pool.allocate_slots(req, num_hit, num_new, hits):
                break
            req.num_computed_tokens = num_hit
            if req.num_cached_tokens is None:
                req.num_cached_tokens = num_hit
            self.waiting.popleft()
            self.running.append(req)
            scheduled.append((req, num_new))
            budget -= num_new
        return self._build(scheduled, preempted)

    def _build(
        self, scheduled: list[tuple[PyRequest, int]], preempted: list[str]
    ) -> dict[str, object]:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        query_start_loc = [0]
        seq_lens: list[int] = []
        logits_indices: list[int] = []
        sampling: list[bool] = []
        computed: list[int] = []
        num_sched: list[int] = []
        max_blocks = max((len(r.block_table) for r, _ in scheduled), default=0)
        block_tables = np.zeros((len(scheduled), max_blocks), dtype=np.int32)
        self.pending = []
        for row, (req, n) in enumerate(scheduled):
            start, end = req.num_computed_tokens, req.num_computed_tokens + n
            input_ids.extend(req.tokens[start:end])
            positions.extend(range(start, end))
            table = req.block_table
            slot_mapping.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_start_loc.append(len(input_ids))
            seq_lens.append(end)
            block_tables[row, : len(table)] = table
            samples = end == len(req.tokens)
            if samples:
                logits_indices.append(len(input_ids) - 1)
                self.pending.append(req)
            sampling.append(samples)
            computed.append(start)
            num_sched.append(n)
            req.num_computed_tokens = end
        return {
            "input_ids": np.array(input_ids, dtype=np.int32),
            "positions": np.array(positions, dtype=np.int32),
            "slot_mapping": np.array(slot_mapping, dtype=np.int64),
            "query_start_loc": np.array(query_start_loc, dtype=np.int32),
            "seq_lens": np.array(seq_lens, dtype=np.int32),
            "block_tables": block_tables,
            "logits_indices": np.array(logits_indices, dtype=np.int32),
            "sampling_mask": np.array(sampling, dtype=np.bool_),
            "num_computed_tokens": np.array(computed, dtype=np.int32),
            "num_scheduled_tokens": np.array(num_sched, dtype=np.int32),
            "req_ids": [r.request_id for r, _ in scheduled],
            "preempted_req_ids": preempted,
        }

    def update(self, sampled: np.ndarray | list[int]) -> list[tuple]:
        tokens = sampled.tolist() if isinstance(sampled, np.ndarray) else list(sampled)
        if len(tokens) != len(self.pending):
            raise ValueError("wrong number of sampled tokens")
        out = []
        finished = False
        for req, token in zip(self.pending, tokens, strict=True):
            req.tokens.append(token)
            n_out = len(req.tokens) - req.num_prompt_tokens
            reason = None
            if token in req.eos_token_ids:
                reason = "stop"
            elif n_out >= req.max_tokens or len(req.tokens) >= req.max_model_len:
                reason = "length"
            if reason is not None:
                finished = True
                self.pool.free_blocks(req)
                del self.requests[req.request_id]
            out.append((req.request_id, token, reason is not None, reason, None))
        if finished:
            self.running = [r for r in self.running if r.request_id in self.requests]
        self.pending = []
        return out
