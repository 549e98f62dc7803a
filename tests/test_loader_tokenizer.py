"""GGUF tokenizer conversion beyond the default model: SentencePiece vocabularies
("llama") and the other byte-level pre-tokenizers, against transformers' tokenizer
built from the same GGUF and against llama.cpp's documented behaviour."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from tokenizers import Tokenizer

from rsllm.errors import ModelLoadError
from rsllm.model.gguf_file import GGUFFile
from rsllm.model.gguf_tokenizer import cached_tokenizer_path, tokenizer_json

PIECES = [
    "▁", "h", "e", "l", "o", "w", "r", "d", "a", "t", "s", "i", "n", "c",
    "▁h", "▁w", "he", "ll", "llo", "▁he", "▁hello", "or", "▁wor", "ld", "▁world",
    "▁t", "th", "▁th", "▁the", "at", "▁c", "▁cat", "in", "▁in", "▁s", "▁sat",
]  # fmt: skip


def _write(path: Path, tokenizer_kv: dict, n_tokens: int) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    for key, value in tokenizer_kv.items():
        if isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, value)
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.zeros((n_tokens, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory) -> Path:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + PIECES
    # Longer pieces merge first (higher score); single characters last.
    scores = [0.0] * 259 + [-float(i) if len(p) > 1 else -100.0 - i for i, p in enumerate(PIECES)]
    kv = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(PIECES),
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }
    return _write(tmp_path_factory.mktemp("spm") / "spm.gguf", kv, len(tokens))


def _mine(path: Path, cache: Path) -> Tokenizer:
    return Tokenizer.from_file(str(cached_tokenizer_path(path, GGUFFile(path).metadata, cache)))


@pytest.mark.parametrize("text", ["hello world", "the cat sat in the hat", "héllo wörld 😀", "x"])
def test_sentencepiece_matches_transformers(spm_gguf, tmp_path, text):
    from transformers import AutoTokenizer

    mine = _mine(spm_gguf, tmp_path)
    ref = AutoTokenizer.from_pretrained(spm_gguf.parent, gguf_file=spm_gguf.name)
    ids = mine.encode(text).ids
    assert ids == ref.encode(text)
    assert ids[0] == 1  # add_bos_token
    assert mine.decode(ids, skip_special_tokens=True) == text
    assert mine.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_sentencepiece_follows_llama_cpp_around_spaces_and_specials(spm_gguf, tmp_path):
    """Where transformers' GGUF tokenizer departs from llama.cpp and Llama 2's own
    tokenizer.json (a space is prefixed to every text run, also after a special
    token), the conversion follows llama.cpp."""
    mine = _mine(spm_gguf, tmp_path)
    assert mine.encode("hello</s>world").tokens == ["<s>", "▁hello", "</s>", "▁world"]
    assert mine.encode(" hello").tokens == ["<s>", "▁", "▁hello"]
    # Byte fallback: é is two byte tokens, and decodes back.
    assert mine.encode("é").tokens == ["<s>", "▁", "<0xC3>", "<0xA9>"]


@pytest.fixture(scope="module")
def default_tokenizer_kv(default_model_path) -> dict:
    meta = GGUFFile(default_model_path).metadata
    return {k: v for k, v in meta.items() if k.startswith("tokenizer.ggml.")}


@pytest.mark.slow
@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_other_byte_level_pre_tokenizers_match_transformers(default_tokenizer_kv, tmp_path, pre):
    from transformers import AutoTokenizer

    kv = {**default_tokenizer_kv, "tokenizer.ggml.pre": pre}
    path = _write(tmp_path / f"{pre}.gguf", kv, len(kv["tokenizer.ggml.tokens"]))
    mine = _mine(path, tmp_path / "cache")
    ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    text = "Numbers 12345 and 7, CONTRACTIONS I'LL we're\n\n  indented\tcode();  日本語 😀"
    ids = mine.encode(text).ids
    assert ids == ref.encode(text)
    assert mine.decode(ids) == ref.decode(ids) == text


def test_unknown_pre_tokenizer_and_model_are_refused():
    base = {"tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.merges": []}
    with pytest.raises(ModelLoadError, match="pre-tokenizer 'nonesuch'"):
        tokenizer_json({**base, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "nonesuch"})
    with pytest.raises(ModelLoadError, match="tokenizer model 'bert'"):
        tokenizer_json({**base, "tokenizer.ggml.model": "bert"})
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        tokenizer_json({})
