"""The sampler: each parameter changes the distribution as specified (statistical tests
with fixed seeds), per-request seeds reproduce whatever else is in the batch, and
logprobs are the log_softmax of the raw logits."""

from __future__ import annotations

import math

import pytest
import torch

from rsllm.engine.sampling_state import RequestState, build_sampling_tensors
from rsllm.model.sampler import hashed_exponential, sample, seed_key
from rsllm.sampling_params import SamplingParams

N = 20000  # rows per statistical test: frequency error ~ 1/sqrt(N) ~ 0.007


def draw(logits: list[float], n: int = N, outputs: list[int] | None = None, **kw) -> torch.Tensor:
    """Sample n rows of the same logits with the same params; returns the token counts."""
    states = [
        RequestState([0], SamplingParams(**kw), list(outputs or []), stop_ids=(0,))
        for _ in range(n)
    ]
    st = build_sampling_tensors(states, len(logits), torch.device("cpu"))
    rows = torch.tensor(logits, dtype=torch.float32).repeat(n, 1)
    out = sample(rows, st, torch.Generator().manual_seed(1234))
    return torch.bincount(out.sampled, minlength=len(logits)).double() / n


def expect(freq: torch.Tensor, probs: list[float], tol: float = 0.015) -> None:
    torch.testing.assert_close(freq, torch.tensor(probs, dtype=torch.float64), atol=tol, rtol=0)


LOGITS = [math.log(p) for p in (0.5, 0.3, 0.1, 0.1)]


def test_temperature_one_follows_softmax():
    expect(draw(LOGITS), [0.5, 0.3, 0.1, 0.1])


def test_temperature_scales_logits():
    p = torch.tensor(LOGITS).div(0.5).softmax(-1).tolist()
    expect(draw(LOGITS, temperature=0.5), p)
    p = torch.tensor(LOGITS).div(2.0).softmax(-1).tolist()
    expect(draw(LOGITS, temperature=2.0), p)


def test_greedy_is_argmax():
    expect(draw([0.1, 2.0, 1.9, -1.0], n=50, temperature=0.0), [0, 1, 0, 0], tol=0)


def test_top_k_keeps_k_most_likely():
    expect(draw(LOGITS, top_k=2), [0.5 / 0.8, 0.3 / 0.8, 0, 0])


def test_top_p_keeps_smallest_set_reaching_p():
    expect(draw(LOGITS, top_p=0.6), [0.5 / 0.8, 0.3 / 0.8, 0, 0])
    logits = [math.log(p) for p in (0.5, 0.3, 0.15, 0.05)]
    expect(draw(logits, top_p=0.9), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0])


def test_min_p_drops_tokens_below_fraction_of_max():
    expect(draw(LOGITS, min_p=0.25), [0.5 / 0.8, 0.3 / 0.8, 0, 0])


def test_top_k_and_top_p_together():
    logits = [math.log(p) for p in (0.05, 0.5, 0.15, 0.3)]
    expect(draw(logits, top_k=3, top_p=0.99), [0, 0.5 / 0.95, 0.15 / 0.95, 0.3 / 0.95])
    # top-p applies to the top-k renormalized: 0.5/0.95 + 0.3/0.95 = 0.84 < 0.9
    expect(draw(logits, top_k=3, top_p=0.8), [0, 0.5 / 0.8, 0, 0.3 / 0.8])


def test_frequency_and_presence_penalties_follow_counts():
    flat = [0.0, 0.0, 0.0, 0.0]
    # token 1 seen twice: frequency subtracts 2 * 0.5, presence subtracts 0.7 once
    w = [1, math.exp(-2 * 0.5), 1, 1]
    expect(draw(flat, outputs=[1, 1], frequency_penalty=0.5), [x / sum(w) for x in w])
    w = [1, math.exp(-0.7), 1, 1]
    expect(draw(flat, outputs=[1, 1], presence_penalty=0.7), [x / sum(w) for x in w])


def test_repetition_penalty_divides_positive_multiplies_negative():
    # prompt token is 0 (see `draw`): 2.0 / 1.5 < 1.9 -> greedy moves to token 1
    expect(draw([2.0, 1.9, -5, -5], n=10, temperature=0, repetition_penalty=1.5), [0, 1, 0, 0], 0)
    # a negative seen logit gets more negative: -1 * 2 = -2 vs -1.5 for an unseen token
    expect(
        draw([-1.0, -1.5, -9, -9], n=10, temperature=0, outputs=[0], repetition_penalty=2.0),
        [0, 1, 0, 0],
        0,
    )
    logits = [1.0, 1.0, 1.0, 1.0]
    w = [math.exp(1 / 2), math.exp(1 / 2), math.e, math.e]  # tokens 0 (prompt) and 1 (output)
    expect(draw(logits, outputs=[1], repetition_penalty=2.0), [x / sum(w) for x in w])


def test_logit_bias_adds_to_logits():
    w = [1, 3, 1, 1]
    expect(draw([0.0] * 4, logit_bias={1: math.log(3)}), [x / sum(w) for x in w])


def test_allowed_token_ids_restricts_support():
    expect(draw(LOGITS, allowed_token_ids=[1, 3]), [0, 0.75, 0, 0.25])


def test_min_tokens_masks_stop_ids_until_reached():
    # stop id 0 (see `draw`) is the argmax but banned while fewer than 3 outputs exist
    expect(
        draw([5.0, 1.0, 0.0, 0.0], n=10, temperature=0, min_tokens=3, outputs=[1]), [0, 1, 0, 0], 0
    )
    expect(
        draw([5.0, 1.0, 0.0, 0.0], n=10, temperature=0, min_tokens=3, outputs=[1, 1, 1]),
        [1, 0, 0, 0],
        0,
    )


def test_seeded_noise_is_uniform_and_follows_probs():
    # over many seeds the hashed exponential race samples the softmax distribution
    states = [RequestState([0], SamplingParams(seed=s)) for s in range(N)]
    st = build_sampling_tensors(states, 4, torch.device("cpu"))
    out = sample(torch.tensor(LOGITS).repeat(N, 1), st, torch.Generator().manual_seed(0))
    expect(torch.bincount(out.sampled, minlength=4).double() / N, [0.5, 0.3, 0.1, 0.1])
    e = hashed_exponential(torch.tensor([seed_key(7, 0)]), 100000)
    assert abs(e.mean().item() - 1) < 0.02 and abs(e.var().item() - 1) < 0.05


def test_seed_reproduces_whatever_the_batch():
    vocab = 1000
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(5))

    def run(seeded_at: int, batch: int, outputs: list[int]) -> int:
        states = [RequestState([0], SamplingParams(seed=None)) for _ in range(batch)]
        states[seeded_at] = RequestState([0], SamplingParams(seed=42), list(outputs))
        st = build_sampling_tensors(states, vocab, torch.device("cpu"))
        noise_gen = torch.Generator().manual_seed(batch)  # unseeded rows differ per run
        return int(sample(logits.repeat(batch, 1), st, noise_gen).sampled[seeded_at])

    alone = [run(0, 1, [9] * k) for k in range(20)]
    assert [run(3, 7, [9] * k) for k in range(20)] == alone
    assert [run(0, 2, [9] * k) for k in range(20)] == alone
    assert len(set(alone)) > 5  # positions draw different tokens
    other = [
        int(
            sample(
                logits.clone(),
                build_sampling_tensors(
                    [RequestState([0], SamplingParams(seed=43), [9] * k)],
                    vocab,
                    torch.device("cpu"),
                ),
            ).sampled[0]
        )
        for k in range(20)
    ]
    assert other != alone


@pytest.mark.parametrize("k", [0, 3])
def test_logprobs_equal_log_softmax_of_raw_logits(k):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=gen) * 3
    states = [
        RequestState([0], SamplingParams(logprobs=k, temperature=0.7, top_k=5, seed=i))
        for i in range(5)
    ]
    st = build_sampling_tensors(states, 50, torch.device("cpu"))
    out = sample(logits.clone(), st, gen)
    ref = logits.log_softmax(-1)
    lp = out.logprobs
    assert lp is not None and lp.token_ids.shape == (5, 1 + k)
    assert torch.equal(lp.token_ids[:, 0], out.sampled)
    torch.testing.assert_close(lp.logprobs, ref.gather(1, lp.token_ids))
    ranks = (ref > ref.gather(1, out.sampled[:, None])).sum(-1) + 1
    assert torch.equal(lp.ranks, ranks)
    if k:
        assert torch.equal(lp.token_ids[:, 1:], ref.topk(k).indices)
