"""A GGUF file's tokenizer, written out as a Hugging Face `tokenizer.json`.

A GGUF stores the vocabulary, merges, scores and token types as metadata under
llama.cpp's key names. All runtime tokenization goes through the `tokenizers` crate
in the Rust core, which reads `tokenizer.json`, so the metadata is converted once per
file and cached under the user's cache directory.

Two tokenizer models are supported, as `tokenizer.ggml.model` names them:
- "gpt2": byte-level BPE (Llama 3, SmolLM, Qwen2); the text is split by the regex of
  `tokenizer.ggml.pre` before the merges apply, as in the original tokenizer.json.
- "llama": SentencePiece BPE with byte fallback (Llama 2, Mistral); the merges are
  recovered from the vocabulary, ranked by the merged piece's score.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rsllm.errors import ModelLoadError

# Bump when the produced tokenizer.json changes, so that stale cache entries are ignored.
CONVERTER_VERSION = 1

# llama.cpp token types (tokenizer.ggml.token_type).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Split regexes of the original tokenizers, by `tokenizer.ggml.pre`.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(add_prefix_space: bool, use_regex: bool) -> dict[str, Any]:
    return {
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": True,
        "use_regex": use_regex,
    }


def _split_then_bytes(regex: str) -> dict[str, Any]:
    split = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
    return {"type": "Sequence", "pretokenizers": [split, _byte_level(False, False)]}


def _digits_then_gpt2(add_prefix_space: bool) -> dict[str, Any]:
    digits = {"type": "Digits", "individual_digits": True}
    return {"type": "Sequence", "pretokenizers": [digits, _byte_level(add_prefix_space, True)]}


# tokenizer.ggml.pre -> (pre_tokenizer, ignore_merges). Unknown names are refused, as
# llama.cpp does: a wrong split gives plausible but wrong token ids.
def _pre_tokenizer(pre: str, add_prefix_space: bool) -> tuple[dict[str, Any], bool]:
    if pre in ("default", "gpt2", "gpt-2"):
        return _byte_level(add_prefix_space, True), False
    if pre in ("smollm", "starcoder", "refact"):
        return _digits_then_gpt2(add_prefix_space), False
    if pre in ("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3", "dbrx"):
        # Llama 3's tokenizer.json takes a whole pre-token that is in the vocabulary as is.
        return _split_then_bytes(_LLAMA3_SPLIT), True
    if pre in ("qwen2", "deepseek-r1-qwen"):
        return _split_then_bytes(_QWEN2_SPLIT), False
    raise ModelLoadError(
        f"GGUF tokenizer pre-tokenizer {pre!r} is not supported (supported: default, gpt2, "
        "smollm, starcoder, llama-bpe, qwen2); pass a directory with a tokenizer.json "
        "via --tokenizer instead"
    )


def _added_tokens(tokens: list[str], types: list[int], skip: set[int]) -> list[dict[str, Any]]:
    """Control and unknown tokens as special added tokens, user-defined ones as plain
    added tokens: both must match whole in the text, never be cut by the merges."""
    added = []
    for token_id, (token, token_type) in enumerate(zip(tokens, types, strict=True)):
        if token_type not in (_UNKNOWN, _CONTROL, _USER_DEFINED) or token_id in skip:
            continue
        added.append(
            {
                "id": token_id,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": token_type != _USER_DEFINED,
            }
        )
    return added


def _vocab(tokens: list[str]) -> tuple[dict[str, int], set[int]]:
    """token -> id, keeping the first id of a duplicated token (ids of later copies
    are returned apart so that they are not added twice)."""
    vocab: dict[str, int] = {}
    duplicates = set()
    for token_id, token in enumerate(tokens):
        if token in vocab:
            duplicates.add(token_id)
        else:
            vocab[token] = token_id
    return vocab, duplicates


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[list[str]]:
    """Recover BPE merges from a SentencePiece vocabulary: every split of a normal piece
    into two pieces of the vocabulary is a merge, ranked by the piece's score."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] in (_NORMAL, _USER_DEFINED)}
    ranked = []
    for piece, piece_id in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[piece_id], vocab[left], vocab[right], left, right))
    ranked.sort()
    return [[left, right] for *_, left, right in ranked]


def _post_processor(
    meta: dict[str, Any], tokens: list[str], fallback: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Prepend BOS / append EOS when the file asks for it."""

    def flagged(flag: str, id_key: str) -> int | None:
        token_id = meta.get(id_key)
        if not meta.get(flag, False) or not isinstance(token_id, int):
            return None
        return token_id if 0 <= token_id < len(tokens) else None

    bos_id = flagged("tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id")
    eos_id = flagged("tokenizer.ggml.add_eos_token", "tokenizer.ggml.eos_token_id")
    if bos_id is None and eos_id is None:
        return fallback

    def template(*seq_ids: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for type_id, seq in enumerate(seq_ids):
            if bos_id is not None:
                out.append({"SpecialToken": {"id": tokens[bos_id], "type_id": type_id}})
            out.append({"Sequence": {"id": seq, "type_id": type_id}})
            if eos_id is not None:
                out.append({"SpecialToken": {"id": tokens[eos_id], "type_id": type_id}})
        return out

    specials = {}
    for token_id in (bos_id, eos_id):
        if token_id is not None:
            tok = tokens[token_id]
            specials[tok] = {"id": tok, "ids": [token_id], "tokens": [tok]}
    return {
        "type": "TemplateProcessing",
        "single": template("A"),
        "pair": template("A", "B"),
        "special_tokens": specials,
    }


def _bpe_model(vocab: dict[str, int], merges: list[list[str]], **options: Any) -> dict[str, Any]:
    model: dict[str, Any] = {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
    }
    model.update(options)
    model["vocab"] = vocab
    model["merges"] = merges
    return model


def tokenizer_json(meta: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer.json content for a GGUF file's metadata."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if kind is None or not tokens:
        raise ModelLoadError("the GGUF file holds no tokenizer (no tokenizer.ggml.* metadata)")
    types = meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise ModelLoadError(
            f"GGUF tokenizer metadata is inconsistent: {len(tokens)} tokens, {len(types)} types"
        )
    vocab, duplicates = _vocab(tokens)
    out: dict[str, Any] = {"version": "1.0", "truncation": None, "padding": None}
    out["added_tokens"] = _added_tokens(tokens, types, duplicates)

    if kind == "gpt2":
        add_prefix_space = bool(meta.get("tokenizer.ggml.add_space_prefix", False))
        pre = meta.get("tokenizer.ggml.pre", "default")
        pre_tokenizer, ignore_merges = _pre_tokenizer(pre, add_prefix_space)
        merges = [m.split(" ", 1) for m in meta.get("tokenizer.ggml.merges", [])]
        out["normalizer"] = None
        out["pre_tokenizer"] = pre_tokenizer
        out["post_processor"] = _post_processor(
            meta, tokens, _byte_level(True, True) | {"trim_offsets": False}
        )
        out["decoder"] = _byte_level(True, True)
        out["model"] = _bpe_model(vocab, merges, ignore_merges=ignore_merges)
    elif kind == "llama":
        scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        add_space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        unk_id = meta.get("tokenizer.ggml.unknown_token_id")
        if "tokenizer.ggml.merges" in meta:
            merges = [m.split(" ", 1) for m in meta["tokenizer.ggml.merges"]]
        else:
            merges = _spm_merges(tokens, scores, types)
        replace = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
        prepend = {"type": "Prepend", "prepend": "\u2581"}
        out["normalizer"] = {
            "type": "Sequence",
            "normalizers": [prepend, replace] if add_space_prefix else [replace],
        }
        out["pre_tokenizer"] = None
        out["post_processor"] = _post_processor(meta, tokens, None)
        decoders: list[dict[str, Any]] = [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]
        if add_space_prefix:
            decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        out["decoder"] = {"type": "Sequence", "decoders": decoders}
        out["model"] = _bpe_model(
            vocab,
            merges,
            unk_token=tokens[unk_id] if unk_id is not None else None,
            fuse_unk=True,
            byte_fallback=True,
        )
    else:
        raise ModelLoadError(
            f"GGUF tokenizer model {kind!r} is not supported (supported: 'gpt2', 'llama'); "
            "pass a directory with a tokenizer.json via --tokenizer instead"
        )
    return out


def special_tokens(meta: dict[str, Any]) -> dict[str, str | None]:
    """The bos/eos/unk/pad token strings named by the file's token ids."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    out: dict[str, str | None] = {}
    for name, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        out[name] = tokens[token_id] if token_id is not None and token_id < len(tokens) else None
    return out


def cache_root() -> Path:
    """rsllm's cache directory: $XDG_CACHE_HOME/rsllm, else ~/.cache/rsllm."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rsllm"


def cached_tokenizer_path(
    gguf_path: str | Path, meta: dict[str, Any], cache_dir: str | Path | None = None
) -> Path:
    """Path of the tokenizer.json for `gguf_path`, converting it on first use.

    The cache key is the file's path, size and modification time (hashing gigabytes
    of weights would cost more than the conversion), plus the converter version.
    """
    path = Path(gguf_path).resolve()
    st = path.stat()
    key = hashlib.sha256(
        f"{CONVERTER_VERSION}\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    ).hexdigest()[:32]
    target = Path(cache_dir or cache_root() / "tokenizers") / key / "tokenizer.json"
    if target.is_file():
        return target
    content = json.dumps(tokenizer_json(meta), ensure_ascii=False)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so that a concurrent reader never sees half a file.
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as e:
        raise ModelLoadError(
            f"cannot write the converted tokenizer to {target}: {e}; "
            "set XDG_CACHE_HOME to a writable directory"
        ) from None
    return target
