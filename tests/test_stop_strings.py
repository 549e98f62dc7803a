"""Stop strings in the streaming detokenizer, on the default model's tokenizer.

A stream ends exactly before the first stop string to complete (or after it with
`include_stop_str_in_output`), text that could still become a stop string is held back,
and nothing shown is ever taken back. Checked against a plain Python search over the
full decoded text.
"""

from __future__ import annotations

import random

import pytest

from _tokenizers import TEXTS, smollm_tokenizer_json
from rsllm._core import DetokenizerBatch, Tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return Tokenizer.from_file(str(smollm_tokenizer_json(tmp_path_factory.mktemp("smollm"))))


def stream(
    tokenizer: Tokenizer, ids: list[int], stop: list[str], **params: object
) -> tuple[list[str], str | None, int]:
    """Stream `ids` one per step: (text shown at each step, stop string, steps taken)."""
    batch = DetokenizerBatch(tokenizer)
    batch.add_request("r", [], stop=stop, **params)  # type: ignore[arg-type]
    shown = []
    for step, token in enumerate(ids, start=1):
        [(_, text, stop_str)] = batch.step([("r", [token])])
        shown.append(text)
        if stop_str is not None:
            assert "r" not in batch, "a stopped request is removed"
            return shown, stop_str, step
    shown.append(batch.finish("r"))
    return shown, None, len(ids)


def expected_output(
    tokenizer: Tokenizer, ids: list[int], stop: list[str], include: bool, min_tokens: int = 0
) -> tuple[str, str | None]:
    """The first stop string to complete in the full text (ties: the longer one), among
    those that complete after the first `min_tokens` tokens' text."""
    text = tokenizer.decode(ids)
    # The text shown by then: a trailing incomplete character is not part of it yet.
    checked_from = len(tokenizer.decode(ids[:min_tokens]).rstrip("\ufffd"))
    best = None
    for s in stop:
        start = text.find(s)
        while start != -1 and start + len(s) <= checked_from:
            start = text.find(s, start + 1)
        if start != -1 and (best is None or (start + len(s), start) < (best[1], best[0])):
            best = (start, start + len(s), s)
    if best is None:
        return text, None
    return text[: best[1] if include else best[0]], best[2]


def token_texts(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    return [
        tokenizer.decode(ids[: i + 1])[len(tokenizer.decode(ids[:i])) :] for i in range(len(ids))
    ]


@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize("span", [2, 3])
def test_stop_string_split_across_tokens(tokenizer, include, span):
    ids = tokenizer.encode("The answer is forty-two, and that is final.")
    pieces = token_texts(tokenizer, ids)
    first = 1
    assert all(len(p) >= 2 for p in pieces[first : first + span])
    # The tail of one token, any whole tokens between, and the head of the last one.
    stop = pieces[first][-2:] + "".join(pieces[first + 1 : first + span - 1])
    stop += pieces[first + span - 1][:1]
    shown, stop_str, steps = stream(tokenizer, ids, [stop], include_stop_str_in_output=include)
    assert stop_str == stop
    assert steps == first + span  # stopped at the token that completed it
    before = "".join(pieces[:first]) + pieces[first][:-2]
    assert "".join(shown) == (before + stop if include else before)
    # While the stop string was incomplete, its start was held back.
    assert "".join(shown[: first + 1]) == before


def test_stop_string_at_the_first_token(tokenizer):
    ids = tokenizer.encode("Hello world")
    shown, stop_str, steps = stream(tokenizer, ids, ["Hello"])
    assert (shown, stop_str, steps) == ([""], "Hello", 1)
    shown, stop_str, steps = stream(tokenizer, ids, ["Hello"], include_stop_str_in_output=True)
    assert (shown, stop_str, steps) == (["Hello"], "Hello", 1)


def test_overlapping_stop_strings(tokenizer):
    ids = tokenizer.encode("hello world, hello moon")
    # "o w" completes before "lo world" and "hello moon" do.
    shown, stop_str, _ = stream(tokenizer, ids, ["lo world", "o w", "hello moon"])
    assert ("".join(shown), stop_str) == ("hell", "o w")
    # Both end at the same character: the one that starts first (the longer) wins.
    shown, stop_str, _ = stream(tokenizer, ids, ["world", "o world"])
    assert ("".join(shown), stop_str) == ("hell", "o world")


def test_partial_match_is_released_when_it_fails(tokenizer):
    ids = tokenizer.encode("hello world wide web")
    shown, stop_str, _ = stream(tokenizer, ids, ["world peace"])
    assert stop_str is None
    assert "".join(shown) == "hello world wide web"
    # " world" was held (it could have become "world peace") until " wide" arrived.
    assert shown[1] == " " and shown[2].startswith("world")


def test_min_tokens_delays_stop_strings(tokenizer):
    ids = tokenizer.encode("stop here, then stop again. stop")
    shown, stop_str, _ = stream(tokenizer, ids, ["stop"], min_tokens=1)
    expected, expected_stop = expected_output(tokenizer, ids, ["stop"], False, min_tokens=1)
    assert ("".join(shown), stop_str) == (expected, expected_stop)
    assert expected == "stop here, then "
    shown, stop_str, _ = stream(tokenizer, ids, ["stop"], min_tokens=len(ids))
    assert (stop_str, "".join(shown)) == (None, tokenizer.decode(ids))


def test_random_stops_match_a_full_text_search(tokenizer):
    """Nothing shown is ever taken back, and the stream stops where a plain search of
    the full text says, for random stop strings cut out of realistic texts."""
    rng = random.Random(7)
    for trial in range(150):
        text = rng.choice(TEXTS)
        ids = tokenizer.encode(text)
        full = tokenizer.decode(ids)
        stops = []
        for _ in range(rng.randint(1, 3)):
            start = rng.randrange(len(full))
            stops.append(full[start : start + rng.randint(1, 6)])
        if rng.random() < 0.3:
            stops.append("never in the text")
        include = rng.random() < 0.5
        min_tokens = rng.choice([0, 0, 2, 5])
        shown, stop_str, _ = stream(
            tokenizer, ids, stops, include_stop_str_in_output=include, min_tokens=min_tokens
        )
        expected, expected_stop = expected_output(tokenizer, ids, stops, include, min_tokens)
        assert ("".join(shown), stop_str) == (expected, expected_stop), (trial, stops)
        so_far = ""
        for piece in shown:
            so_far += piece
            assert expected.startswith(so_far)


def test_multibyte_stop_string_split_inside_a_character(tokenizer):
    text = "你好，世界！再见。"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text) // 2  # some characters take several byte-level tokens
    shown, stop_str, _ = stream(tokenizer, ids, ["世界"])
    assert ("".join(shown), stop_str) == ("你好，", "世界")
