"""The sampler: one batched pass over the S logits rows of a step.

Order (vLLM v1's): allowed-token / grammar masks, min_tokens (stop ids masked), logit bias
-> repetition / frequency / presence penalties -> greedy rows take the argmax here ->
temperature -> top-k, top-p, min-p -> a random draw by the exponential race
`argmax(p / E)` with E ~ Exp(1). Seeded rows draw E from a counter-based hash of
(seed, output position, token id), so their draw does not depend on the rest of the batch
or on what ran before (a preempted request resamples the same token); unseeded rows
draw from the runner's generator. Logprobs are those of the raw model logits (vLLM's
default `raw_logprobs`), with the sampled token first, then the top-n, and its rank.

`SamplingTensors` is built on the host by the runner (`sampling_state.py`); everything
here is tensor ops over all rows at once, with no per-row host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF


@dataclass
class Penalties:
    presence: torch.Tensor  # [S] float32
    frequency: torch.Tensor  # [S] float32
    repetition: torch.Tensor  # [S] float32
    output_counts: torch.Tensor  # [S, V] float32, occurrences in the output so far
    prompt_mask: torch.Tensor  # [S, V] bool, tokens of the prompt


@dataclass
class SamplingTensors:
    """The per-row parameters of one step; optional parts are None when no row uses them."""

    temperature: torch.Tensor  # [S] float32, 1.0 on greedy rows (unused there)
    greedy: torch.Tensor  # [S] bool
    all_greedy: bool
    top_k: torch.Tensor | None = None  # [S] int64, 0 = off
    top_p: torch.Tensor | None = None  # [S] float32, 1 = off
    min_p: torch.Tensor | None = None  # [S] float32, 0 = off
    penalties: Penalties | None = None
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # rows, ids, values
    allowed: torch.Tensor | None = None  # [S, V] bool, True = allowed
    banned: tuple[torch.Tensor, torch.Tensor] | None = None  # rows, ids set to -inf
    # Seeded rows: row index [n], and the per-row key hashed from (seed, output position).
    seeded_rows: torch.Tensor | None = None
    seed_keys: torch.Tensor | None = None  # [n] int64 in [0, 2^32)
    max_num_logprobs: int | None = None  # largest `logprobs` asked by any row


@dataclass
class LogprobsTensors:
    token_ids: torch.Tensor  # [S, 1 + k] int64: the sampled token, then the top-k
    logprobs: torch.Tensor  # [S, 1 + k] float32
    ranks: torch.Tensor  # [S] int64, 1-based rank of the sampled token


@dataclass
class SamplerOutput:
    sampled: torch.Tensor  # [S] int64
    logprobs: LogprobsTensors | None


def seed_key(seed: int, position: int) -> int:
    """A 32-bit key for (seed, output position): splitmix64 of the pair, folded."""
    x = (seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (
        (1 << 64) - 1
    )
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & ((1 << 64) - 1)
    x ^= x >> 31
    return (x ^ (x >> 32)) & _MASK32


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    # murmur3's finalizer on values in [0, 2^32) held in int64 (so shifts are logical);
    # products wrap mod 2^64 and the mask keeps their exact low 32 bits.
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def hashed_exponential(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Exp(1) noise [n, V] that is a pure function of (key, token id)."""
    ids = torch.arange(vocab_size, device=keys.device, dtype=torch.int64)
    x = _fmix32(keys[:, None] ^ ((ids * 0x9E3779B1) & _MASK32)[None, :])
    x = _fmix32(x ^ 0x5BD1E995)
    u = (x.to(torch.float64) + 0.5) * (1.0 / 4294967296.0)  # in (0, 1)
    return (-torch.log(u)).to(torch.float32)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Mask disallowed tokens to -inf in place. `bitmask` is bool [S, V] (True = allowed)
    or xgrammar's packed int32 [S, ceil(V / 32)] (bit t % 32 of word t // 32)."""
    s, v = logits.shape
    if bitmask.dtype == torch.bool:
        allowed = bitmask[:, :v]
    else:
        shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
        bits = (bitmask.to(torch.int32)[:, :, None] >> shifts) & 1  # [S, W, 32]
        allowed = bits.reshape(s, -1)[:, :v].bool()
        if allowed.shape[1] < v:  # tokens beyond the grammar's vocabulary are never allowed
            allowed = torch.nn.functional.pad(allowed, (0, v - allowed.shape[1]))
    logits.masked_fill_(~allowed.to(logits.device), float("-inf"))


def _apply_penalties(logits: torch.Tensor, p: Penalties) -> torch.Tensor:
    seen = p.prompt_mask | (p.output_counts > 0)
    rep = p.repetition[:, None]
    # vLLM / HF: a seen token's positive logit is divided by the penalty, a negative one
    # multiplied, over prompt and output tokens.
    logits = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
    logits = logits - p.frequency[:, None] * p.output_counts
    return logits - p.presence[:, None] * (p.output_counts > 0).to(logits.dtype)


def _top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None
) -> torch.Tensor:
    if top_p is None:
        assert top_k is not None
        # Only top-k: threshold at each row's k-th largest logit (k = 0 keeps the row).
        kmax = int(top_k.max())
        vals = logits.topk(kmax, dim=-1).values  # [S, kmax]
        k = top_k.clamp(min=1) - 1
        thr = vals.gather(1, k[:, None])
        thr = torch.where(top_k[:, None] > 0, thr, torch.full_like(thr, float("-inf")))
        return logits.masked_fill(logits < thr, float("-inf"))
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    v = logits.shape[-1]
    if top_k is not None:
        keep_from = (v - top_k).clamp(max=v - 1)  # ascending: the last k are the top-k
        keep_from = torch.where(top_k > 0, keep_from, torch.zeros_like(keep_from))
        pos = torch.arange(v, device=logits.device)[None, :]
        sorted_logits = sorted_logits.masked_fill(pos < keep_from[:, None], float("-inf"))
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= (1 - top_p[:, None])
    drop[:, -1] = False  # always keep the most likely token
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def _logprobs(raw: torch.Tensor, sampled: torch.Tensor, k: int) -> LogprobsTensors:
    lp = raw.log_softmax(dim=-1)
    sampled_lp = lp.gather(1, sampled[:, None])  # [S, 1]
    ranks = (lp > sampled_lp).sum(dim=-1) + 1
    if k > 0:
        top = lp.topk(k, dim=-1)
        ids = torch.cat([sampled[:, None], top.indices], dim=1)
        vals = torch.cat([sampled_lp, top.values], dim=1)
    else:
        ids, vals = sampled[:, None], sampled_lp
    return LogprobsTensors(token_ids=ids, logprobs=vals, ranks=ranks)


def sample(
    logits: torch.Tensor, st: SamplingTensors, generator: torch.Generator | None = None
) -> SamplerOutput:
    """Sample one token per row of `logits` [S, V] (float32; modified in place)."""
    raw = logits.clone() if st.max_num_logprobs is not None else None
    if st.allowed is not None:
        logits.masked_fill_(~st.allowed, float("-inf"))
    if st.banned is not None:
        logits[st.banned] = float("-inf")
    if st.bias is not None:
        rows, ids, values = st.bias
        logits.index_put_((rows, ids), values, accumulate=True)
    if st.penalties is not None:
        logits = _apply_penalties(logits, st.penalties)
    greedy_ids = logits.argmax(dim=-1)
    if st.all_greedy:
        sampled = greedy_ids
    else:
        logits = logits / st.temperature[:, None]
        if st.top_k is not None or st.top_p is not None:
            logits = _top_k_top_p(logits, st.top_k, st.top_p)
        probs = logits.softmax(dim=-1)
        if st.min_p is not None:
            floor = st.min_p[:, None] * probs.max(dim=-1, keepdim=True).values
            probs = probs.masked_fill(probs < floor, 0.0)
        noise = torch.empty_like(probs).exponential_(generator=generator)
        if st.seeded_rows is not None:
            assert st.seed_keys is not None
            noise[st.seeded_rows] = hashed_exponential(st.seed_keys, probs.shape[-1])
        random_ids = (probs / noise).argmax(dim=-1)
        sampled = torch.where(st.greedy, greedy_ids, random_ids)
    lp = None
    if raw is not None:
        lp = _logprobs(raw, sampled, int(st.max_num_logprobs or 0))
    return SamplerOutput(sampled=sampled, logprobs=lp)
