"""Streaming detokenization equals a full decode, for every prefix, and never retracts.

References: the transformers tokenizer of the default model (byte-level BPE, converted
from the GGUF file) and a SentencePiece-style tokenizer with byte fallback, decoded by the
`tokenizers` package. A request's stream is checked against `decode(prompt + ids)` minus
`decode(prompt)` (with no prompt, `decode(ids)`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest

from _tokenizers import (
    TEXTS,
    random_ids,
    sentencepiece_tokenizer_json,
    smollm_hf_tokenizer,
    smollm_tokenizer_json,
)
from rsllm import InvalidRequestError, TokenizerError, UnknownRequestError
from rsllm._core import DetokenizerBatch, Tokenizer

REPLACEMENT = "\ufffd"
# A decoder the byte table does not cover: the detokenizer's generic (windowed) path.
METASPACE = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}
Decode = Callable[[list[int], bool], str]


@pytest.fixture(scope="session")
def smollm(tmp_path_factory) -> tuple[Tokenizer, Decode]:
    path = smollm_tokenizer_json(tmp_path_factory.mktemp("smollm"))
    hf = smollm_hf_tokenizer()
    return Tokenizer.from_file(str(path)), lambda ids, skip: hf.decode(
        ids, skip_special_tokens=skip
    )


@pytest.fixture(scope="session")
def sentencepiece(tmp_path_factory) -> tuple[Tokenizer, Decode]:
    from tokenizers import Tokenizer as HfTokenizer

    path = sentencepiece_tokenizer_json(tmp_path_factory.mktemp("sp"))
    hf = HfTokenizer.from_file(str(path))
    return Tokenizer.from_file(str(path)), lambda ids, skip: hf.decode(
        ids, skip_special_tokens=skip
    )


def reference(decode: Decode, prompt: list[int], ids: list[int], skip: bool) -> str:
    """The text `ids` add after `prompt` in a full decode."""
    before = decode(prompt, skip)
    full = decode(prompt + ids, skip)
    assert full.startswith(before), "test prompts must decode prefix-stably"
    return full[len(before) :]


def stream_all_prefixes(
    tokenizer: Tokenizer, prompt: list[int], ids: list[int], skip: bool
) -> tuple[list[str], list[str]]:
    """Stream `ids`; return the text shown after each token, and what `finish` adds when
    the request ends after each prefix (one request per cut, all in one batch)."""
    batch = DetokenizerBatch(tokenizer)
    batch.add_request("full", prompt, skip_special_tokens=skip)
    for cut in range(len(ids) + 1):
        batch.add_request(f"cut-{cut}", prompt, skip_special_tokens=skip)
    shown, flushed = [], [batch.finish("cut-0")]
    text = ""
    for step, token in enumerate(ids):
        live = ["full", *(f"cut-{cut}" for cut in range(step + 1, len(ids) + 1))]
        outputs = batch.step([(name, [token]) for name in live])
        assert [name for name, _, _ in outputs] == live
        assert all(stop is None for _, _, stop in outputs)
        text += outputs[0][1]
        shown.append(text)
        flushed.append(batch.finish(f"cut-{step + 1}"))
    assert batch.finish("full") == flushed[-1]
    assert len(batch) == 0
    return shown, flushed


def check_byte_level(tokenizer, decode, prompt, ids, skip) -> None:
    """Byte-level BPE: exact at every prefix, up to a trailing incomplete character."""
    shown, flushed = stream_all_prefixes(tokenizer, prompt, ids, skip)
    assert flushed[0] == reference(decode, prompt, [], skip) == ""
    for n in range(1, len(ids) + 1):
        expected = reference(decode, prompt, ids[:n], skip)
        assert shown[n - 1] + flushed[n] == expected, (prompt, ids[:n])
        if not expected.endswith(REPLACEMENT):
            assert shown[n - 1] == expected, (prompt, ids[:n])


def check_sentencepiece(tokenizer, decode, prompt, ids, skip) -> None:
    """SentencePiece byte fallback renders an incomplete byte group as U+FFFD per byte
    (earlier characters of the group too), so exactness holds at clean prefixes."""
    shown, flushed = stream_all_prefixes(tokenizer, prompt, ids, skip)
    for n in range(1, len(ids) + 1):
        expected = reference(decode, prompt, ids[:n], skip)
        if REPLACEMENT not in expected:
            assert shown[n - 1] == expected, (prompt, ids[:n])
            assert flushed[n] == ""
        # Nothing shown is ever taken back: what is shown prefixes the final text.
        assert (shown[n - 1] + flushed[n]).startswith(shown[n - 1])
    final = reference(decode, prompt, ids, skip)
    if REPLACEMENT not in final:
        assert shown[-1] + flushed[-1] == final


def test_decoder_kinds(smollm, sentencepiece, tmp_path):
    assert smollm[0].decoder_kind == "byte_level"
    assert sentencepiece[0].decoder_kind == "sentencepiece"
    generic = sentencepiece_tokenizer_json(tmp_path, decoder=METASPACE)
    assert Tokenizer.from_file(str(generic)).decoder_kind == "generic"


@pytest.mark.parametrize("skip", [True, False])
def test_default_model_realistic_texts(smollm, skip):
    tokenizer, decode = smollm
    chat = "<|im_start|>user\nHi 👋<|im_end|>\n<|im_start|>assistant\n"
    prompts = [[], tokenizer.encode(chat), tokenizer.encode("Answer:")]
    for text in [*TEXTS, chat + "Sure! 你好<|im_end|>"]:
        ids = tokenizer.encode(text)
        for prompt in prompts:
            check_byte_level(tokenizer, decode, prompt, ids, skip)


@pytest.mark.parametrize("skip", [True, False])
def test_default_model_random_ids(smollm, skip):
    tokenizer, decode = smollm
    rng = random.Random(1234)
    specials = tokenizer.special_token_ids
    # The byte-level alphabet's multi-byte pieces (ids ~ 130-250 in this vocabulary)
    # split characters; mix them in often.
    for _ in range(12):
        ids = [
            rng.choice(
                [rng.randrange(tokenizer.vocab_size), rng.randrange(120, 260), rng.choice(specials)]
            )
            for _ in range(24)
        ]
        prompt = random_ids(rng, tokenizer.vocab_size, rng.choice([0, 3]))
        # A random prompt may itself end inside a character: keep only prefix-stable ones.
        if prompt and not decode(prompt + ids, skip).startswith(decode(prompt, skip)):
            prompt = []
        check_byte_level(tokenizer, decode, prompt, ids, skip)


@pytest.mark.parametrize("skip", [True, False])
def test_sentencepiece_realistic_texts(sentencepiece, skip):
    tokenizer, decode = sentencepiece
    prompts = [[], [1], [1, *tokenizer.encode("Hello world")], tokenizer.encode("  x")]
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert any(tokenizer.id_to_token(i).startswith("<0x") for i in ids) or text.isascii()
        for prompt in prompts:
            check_sentencepiece(tokenizer, decode, prompt, [*ids, 2, 428, 2, 1], skip)


@pytest.mark.parametrize("skip", [True, False])
def test_sentencepiece_random_ids(sentencepiece, skip):
    tokenizer, decode = sentencepiece
    rng = random.Random(99)
    words = [
        i for i in range(tokenizer.vocab_size) if not tokenizer.id_to_token(i).startswith("<0x")
    ]
    chars = "é中😀ñ€한"
    for _ in range(20):
        ids: list[int] = []
        while len(ids) < 30:
            if rng.random() < 0.4:
                # The byte tokens of one character, then a word (a new byte group).
                ids += [3 + b for b in rng.choice(chars).encode()]
            ids.append(rng.choice(words))
        check_sentencepiece(tokenizer, decode, rng.choice([[], [1], [1, 300]]), ids, skip)


def test_leading_space_after_the_prompt(sentencepiece, smollm):
    for tokenizer, _ in [sentencepiece, smollm]:
        prompt = tokenizer.encode("Hello")
        answer = tokenizer.encode("Hello world")[len(prompt) :]
        batch = DetokenizerBatch(tokenizer)
        batch.add_request("after-prompt", prompt)
        batch.add_request("no-prompt", [])
        outputs = batch.step([("after-prompt", answer), ("no-prompt", answer)])
        assert [text for _, text, _ in outputs] == [" world", tokenizer.decode(answer)]
        # SentencePiece's decode strips the first space of a text; after a prompt, it stays.
        assert tokenizer.decode(answer) == ("world" if tokenizer is sentencepiece[0] else " world")


def test_generic_decoder_path_is_exact_at_clean_prefixes(tmp_path):
    from tokenizers import Tokenizer as HfTokenizer

    path = sentencepiece_tokenizer_json(tmp_path, decoder=METASPACE)
    tokenizer, hf = Tokenizer.from_file(str(path)), HfTokenizer.from_file(str(path))
    assert tokenizer.decoder_kind == "generic"
    for text in ["Hello world! The fox.", "def main(): return   the answer"]:
        ids = tokenizer.encode(text)
        for prompt in [[], tokenizer.encode("a stop")]:
            shown, flushed = stream_all_prefixes(tokenizer, prompt, ids, True)
            for n in range(1, len(ids) + 1):
                expected = reference(
                    lambda i, s: hf.decode(i, skip_special_tokens=s), prompt, ids[:n], True
                )
                assert shown[n - 1] + flushed[n] == expected


def test_spaces_between_special_tokens_changes_nothing_for_byte_level(smollm):
    tokenizer, decode = smollm
    ids = tokenizer.encode("<|im_start|><|im_end|>a<|im_end|><|im_start|>")
    batch = DetokenizerBatch(tokenizer)
    batch.add_request("spaces", [], skip_special_tokens=False)
    batch.add_request(
        "no-spaces", [], skip_special_tokens=False, spaces_between_special_tokens=False
    )
    outputs = batch.step([("spaces", ids), ("no-spaces", ids)])
    assert outputs[0][1] == outputs[1][1] == decode(ids, False)


def test_several_tokens_per_step(smollm):
    tokenizer, decode = smollm
    ids = tokenizer.encode(TEXTS[3])
    batch = DetokenizerBatch(tokenizer)
    batch.add_request("r", [])
    text = "".join(batch.step([("r", ids[i : i + 5])])[0][1] for i in range(0, len(ids), 5))
    assert text + batch.finish("r") == decode(ids, True)


def test_bad_input_errors(smollm):
    tokenizer, _ = smollm
    batch = DetokenizerBatch(tokenizer)
    batch.add_request("a", [1, 2, 3])
    with pytest.raises(InvalidRequestError, match="already"):
        batch.add_request("a", [])
    with pytest.raises(InvalidRequestError, match="min_tokens"):
        batch.add_request("b", [], min_tokens=-1)
    with pytest.raises(TokenizerError, match="49152"):
        batch.add_request("b", [49152])
    with pytest.raises(UnknownRequestError, match="nope"):
        batch.step([("a", [5]), ("nope", [5])])
    for bad in ([-1], [10**30], [49152]):
        with pytest.raises(TokenizerError):
            batch.step([("a", bad)])
    with pytest.raises(InvalidRequestError, match="twice"):
        batch.step([("a", [5]), ("a", [6])])
    with pytest.raises(TypeError):
        batch.step([("a", "text")])  # type: ignore[list-item]
    with pytest.raises(UnknownRequestError):
        batch.finish("nope")
    with pytest.raises(UnknownRequestError):
        batch.abort_request("nope")
    # A failed step advanced nothing: the request still streams from its start.
    assert batch.step([("a", tokenizer.encode("ok"))]) == [("a", "ok", None)]
    batch.abort_request("a")
    assert "a" not in batch and len(batch) == 0


def test_step_releases_the_gil(smollm):
    tokenizer, _ = smollm
    ids = tokenizer.encode(" ".join(TEXTS) * 2)[:200]
    batch = DetokenizerBatch(tokenizer)
    names = [f"r{i}" for i in range(3000)]
    for name in names:
        batch.add_request(name, [], stop=["never seen", "\n\n\n\n\nUser:"])
    updates = [(name, ids) for name in names]
    ticks = 0
    done = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        time.sleep(0.01)
        before = ticks
        start = time.perf_counter()
        outputs = batch.step(updates)
        elapsed = time.perf_counter() - start
        during = ticks - before
    finally:
        done.set()
        thread.join()
    assert len(outputs) == len(names)
    # The other thread ran while the step (tens of milliseconds) was in Rust.
    assert elapsed > 0.005
    assert during > 1000, (during, elapsed)
