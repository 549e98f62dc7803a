"""Per-request sampling state kept by the model runner, and the step's `SamplingTensors`.

The runner, not the core, remembers each request's output tokens (for penalties,
min_tokens and the seeded noise position); the state survives preemption so a seeded
request continues identically after its recompute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from rsllm.errors import InvalidRequestError
from rsllm.model.sampler import Penalties, SamplingTensors, seed_key
from rsllm.sampling_params import SamplingParams


@dataclass
class RequestState:
    prompt_token_ids: list[int]
    params: SamplingParams
    output_token_ids: list[int] = field(default_factory=list)
    stop_ids: tuple[int, ...] = ()

    @property
    def has_penalties(self) -> bool:
        p = self.params
        return p.presence_penalty != 0 or p.frequency_penalty != 0 or p.repetition_penalty != 1


def check_params(params: SamplingParams, vocab_size: int) -> None:
    """Reject token ids the model cannot produce (they would index out of the logits)."""
    ids = list(params.allowed_token_ids or []) + list((params.logit_bias or {}).keys())
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequestError(
            f"token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})"
        )


def build_sampling_tensors(
    states: list[RequestState], vocab_size: int, device: torch.device
) -> SamplingTensors:
    """One pass over the S sampling requests; only the parts some row uses are built."""
    s = len(states)
    params = [st.params for st in states]
    greedy = np.array([p.greedy for p in params], dtype=np.bool_)
    temp = np.array([1.0 if p.greedy else p.temperature for p in params], dtype=np.float32)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    out = SamplingTensors(temperature=t(temp), greedy=t(greedy), all_greedy=bool(greedy.all()))
    if not out.all_greedy:
        top_k = np.array([p.top_k for p in params], dtype=np.int64)
        top_p = np.array([p.top_p for p in params], dtype=np.float32)
        min_p = np.array([p.min_p for p in params], dtype=np.float32)
        sampled_rows = ~greedy
        if (top_k[sampled_rows] > 0).any():
            out.top_k = t(np.minimum(top_k, vocab_size))
        if (top_p[sampled_rows] < 1).any():
            out.top_p = t(top_p)
        if (min_p[sampled_rows] > 0).any():
            out.min_p = t(min_p)
        seeded = [i for i, p in enumerate(params) if p.seed is not None and not p.greedy]
        if seeded:
            out.seeded_rows = t(np.array(seeded, dtype=np.int64))
            keys = [seed_key(params[i].seed or 0, len(states[i].output_token_ids)) for i in seeded]
            out.seed_keys = t(np.array(keys, dtype=np.int64))
    if any(st.has_penalties for st in states):
        out.penalties = _penalties(states, vocab_size, device)
    bias_rows, bias_ids, bias_vals = [], [], []
    ban_rows, ban_ids = [], []
    allowed_rows = []
    for i, st in enumerate(states):
        p = st.params
        if p.logit_bias:
            bias_rows += [i] * len(p.logit_bias)
            bias_ids += list(p.logit_bias.keys())
            bias_vals += list(p.logit_bias.values())
        if len(st.output_token_ids) < p.min_tokens and st.stop_ids:
            ban_rows += [i] * len(st.stop_ids)
            ban_ids += list(st.stop_ids)
        if p.allowed_token_ids is not None:
            allowed_rows.append(i)
    if bias_rows:
        out.bias = (
            t(np.array(bias_rows, dtype=np.int64)),
            t(np.array(bias_ids, dtype=np.int64)),
            t(np.array(bias_vals, dtype=np.float32)),
        )
    if ban_rows:
        ban = np.array(ban_ids, dtype=np.int64)
        keep = ban < vocab_size
        out.banned = (t(np.array(ban_rows, dtype=np.int64)[keep]), t(ban[keep]))
    if allowed_rows:
        allowed = np.ones((s, vocab_size), dtype=np.bool_)
        for i in allowed_rows:
            allowed[i] = False
            allowed[i, states[i].params.allowed_token_ids] = True
        out.allowed = t(allowed)
    asked = [p.logprobs for p in params if p.logprobs is not None]
    out.max_num_logprobs = max(asked) if asked else None
    return out


def _penalties(states: list[RequestState], vocab_size: int, device: torch.device) -> Penalties:
    s = len(states)
    counts = np.zeros((s, vocab_size), dtype=np.float32)
    prompt_mask = np.zeros((s, vocab_size), dtype=np.bool_)
    for i, st in enumerate(states):
        if not st.has_penalties:
            continue
        if st.output_token_ids:
            np.add.at(counts[i], np.asarray(st.output_token_ids, dtype=np.int64), 1.0)
        if st.params.repetition_penalty != 1:
            prompt_mask[i, np.asarray(st.prompt_token_ids, dtype=np.int64)] = True

    def col(name: str) -> torch.Tensor:
        return torch.tensor([getattr(st.params, name) for st in states], dtype=torch.float32)

    return Penalties(
        presence=col("presence_penalty").to(device),
        frequency=col("frequency_penalty").to(device),
        repetition=col("repetition_penalty").to(device),
        output_counts=torch.from_numpy(counts).to(device),
        prompt_mask=torch.from_numpy(prompt_mask).to(device),
    )
