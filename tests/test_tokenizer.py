"""The Rust tokenizer against the transformers tokenizer of the default model."""

from __future__ import annotations

import random

import pytest

from _tokenizers import TEXTS, smollm_hf_tokenizer, smollm_tokenizer_json
from rsllm import TokenizerError
from rsllm._core import Tokenizer

CHAT = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 👋<|im_end|>\n"


@pytest.fixture(scope="session")
def pair(tmp_path_factory):
    path = smollm_tokenizer_json(tmp_path_factory.mktemp("smollm"))
    return Tokenizer.from_file(str(path)), smollm_hf_tokenizer()


def test_encode_matches_transformers(pair):
    tokenizer, hf = pair
    for text in [*TEXTS, CHAT, ""]:
        expected = hf.encode(text, add_special_tokens=False)
        assert tokenizer.encode(text) == expected
        assert tokenizer.encode(text, add_special_tokens=True) == hf.encode(text)
    # Special tokens in the text are single ids.
    assert tokenizer.encode("<|im_start|>")[0] == tokenizer.token_to_id("<|im_start|>") == 1


def test_encode_batch_matches_encode(pair):
    tokenizer, _ = pair
    texts = [*TEXTS, CHAT] * 20
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]
    assert tokenizer.encode_batch([]) == []


@pytest.mark.parametrize("skip", [True, False])
def test_decode_matches_transformers(pair, skip):
    tokenizer, hf = pair
    rng = random.Random(5)
    sequences = [hf.encode(t, add_special_tokens=False) for t in [*TEXTS, CHAT]]
    sequences += [[rng.randrange(tokenizer.vocab_size) for _ in range(40)] for _ in range(20)]
    for ids in sequences:
        assert tokenizer.decode(ids, skip_special_tokens=skip) == hf.decode(
            ids, skip_special_tokens=skip
        )
    assert tokenizer.decode(()) == ""


def test_vocabulary_and_special_tokens(pair):
    tokenizer, hf = pair
    assert tokenizer.vocab_size == len(hf) == 49152
    for token_id in [0, 1, 2, 17, 300, 49151]:
        token = hf.convert_ids_to_tokens(token_id)
        assert tokenizer.id_to_token(token_id) == token
        assert tokenizer.token_to_id(token) == token_id
    assert tokenizer.id_to_token(49152) is None and tokenizer.id_to_token(-1) is None
    assert tokenizer.token_to_id("no such token, surely") is None
    expected_special = sorted(i for i, t in hf.added_tokens_decoder.items() if t.special)
    assert tokenizer.special_token_ids == expected_special
    assert {hf.eos_token_id, 1, 2} <= set(tokenizer.special_token_ids)
    assert tokenizer.added_tokens[2] == ("<|im_end|>", True)
    assert "byte_level" in repr(tokenizer)


def test_bad_input(pair, tmp_path):
    tokenizer, _ = pair
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        tokenizer.decode([5, 49152])
    with pytest.raises(TokenizerError):
        tokenizer.decode([-3])
    with pytest.raises(TokenizerError, match="out of range"):
        tokenizer.decode([2**70])
    with pytest.raises(TypeError):
        tokenizer.decode("hello")  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match=r"missing\.json"):
        Tokenizer.from_file(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "1.0", "model": {"type": "BPE"')
    with pytest.raises(TokenizerError, match=r"broken\.json"):
        Tokenizer.from_file(broken)
