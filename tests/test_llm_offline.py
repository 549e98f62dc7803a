"""The offline API on the default model: vLLM's `LLM.generate` and `LLM.chat`."""

from __future__ import annotations

import math

import pytest

from rsllm import LLM, InvalidRequestError, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=16)


@pytest.fixture(scope="module")
def llm():
    return LLM(max_model_len=1024, seed=0)


def test_seed_example_mentions_scattering(llm):
    out = llm.chat(
        [{"role": "system", "content": ""}, {"role": "user", "content": "Why is the sky blue?"}],
        SamplingParams(temperature=0, max_tokens=64),
        use_tqdm=False,
    )
    assert len(out) == 1
    text = out[0].outputs[0].text
    assert "scatter" in text.lower(), text


def test_prompt_forms_give_the_same_output_in_input_order(llm):
    tok = llm.get_tokenizer()
    ids = tok.encode("The capital of France is", add_special_tokens=True)
    outs = llm.generate(
        [
            "The capital of France is",
            {"prompt": "The capital of France is"},
            {"prompt_token_ids": ids},
            "Once upon a time",
        ],
        GREEDY,
        use_tqdm=False,
    )
    assert [o.prompt_token_ids for o in outs[:3]] == [ids] * 3
    assert outs[0].outputs[0].token_ids == outs[1].outputs[0].token_ids
    assert outs[0].outputs[0].token_ids == outs[2].outputs[0].token_ids
    assert outs[3].prompt == "Once upon a time"
    for o in outs:
        c = o.outputs[0]
        assert o.finished and c.finish_reason in ("stop", "length")
        assert c.text == tok.decode(c.token_ids) or c.finish_reason == "stop"


def test_max_tokens_gives_length_and_n_gives_n_completions(llm):
    (out,) = llm.generate(
        "Write a poem about the sea.",
        SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=8, ignore_eos=True),
        use_tqdm=False,
    )
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 8 and c.finish_reason == "length" for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1


def test_stop_string_cuts_the_text(llm):
    (free,) = llm.generate("Count: 1, 2, 3,", GREEDY, use_tqdm=False)
    text = free.outputs[0].text
    assert len(text) > 4
    stop = text[2:4]
    (stopped,) = llm.generate(
        "Count: 1, 2, 3,", SamplingParams(temperature=0, max_tokens=16, stop=[stop]), use_tqdm=False
    )
    c = stopped.outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == stop
    assert c.text == text[: text.index(stop)]


def test_logprobs_are_normalised_and_include_the_sampled_token(llm):
    (out,) = llm.generate(
        "Hello", SamplingParams(temperature=0, max_tokens=4, logprobs=3), use_tqdm=False
    )
    c = out.outputs[0]
    assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
    for tok, entry in zip(c.token_ids, c.logprobs, strict=True):
        assert tok in entry and entry[tok].rank == 1  # greedy picks the top token
        assert all(lp.logprob <= 0 for lp in entry.values())
        assert len(entry) >= 3
    assert math.isclose(
        c.cumulative_logprob,
        sum(e[t].logprob for t, e in zip(c.token_ids, c.logprobs, strict=True)),
        rel_tol=1e-4,
    )


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError):
        LLM(not_a_vllm_argument=1)


def test_invalid_sampling_params_name_the_field():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)


def test_a_prompt_longer_than_the_context_is_rejected_and_the_engine_goes_on(llm):
    with pytest.raises(InvalidRequestError, match="max_model_len"):
        llm.generate({"prompt_token_ids": [5] * 2000}, GREEDY, use_tqdm=False)
    (out,) = llm.generate("Hi", GREEDY, use_tqdm=False)
    assert out.finished
    assert llm.llm_engine.get_stats()["blocks_in_use"] == 0
