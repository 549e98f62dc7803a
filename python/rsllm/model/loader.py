"""Load a model from disk: config, weights under HF names, and tokenizer files.

    loaded = load_model("path/to/model")     # HF directory, .gguf file or hub id
    loaded = load_model(None)                # the embedded default, SmolLM2-135M-Instruct
    loaded = load_model("llama-3-8b", load_format="dummy")   # shapes only

The model code builds its modules from `hf_config` and copies `state_dict` in by name;
the Rust core reads `tokenizer_path`; the chat template renderer takes
`chat_template` and `special_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rsllm.config import LOAD_FORMATS
from rsllm.errors import ModelLoadError
from rsllm.model import gguf_loader, gguf_tokenizer, hf_loader, model_path
from rsllm.model.gguf_file import GGUFFile


@dataclass
class LoadedModel:
    """Everything the engine needs from a model on disk."""

    hf_config: dict[str, Any]
    # HF parameter names, on the CPU; empty for load_format="dummy".
    state_dict: dict[str, torch.Tensor]
    tokenizer_path: str | None
    special_tokens: dict[str, str | None]
    chat_template: str | None
    generation_config: dict[str, Any]
    served_model_name: str
    model_path: str


@dataclass
class _Tokenizer:
    path: str | None
    special_tokens: dict[str, str | None]
    chat_template: str | None


def _gguf_tokenizer(gguf: GGUFFile, convert: bool = True) -> _Tokenizer:
    """The tokenizer in a GGUF's metadata; converted to tokenizer.json only if `convert`
    (a file without one still serves token-id prompts)."""
    meta = gguf.metadata
    path = None
    if convert and "tokenizer.ggml.tokens" in meta:
        path = str(gguf_tokenizer.cached_tokenizer_path(gguf.path, meta))
    template = meta.get("tokenizer.chat_template")
    return _Tokenizer(path, gguf_tokenizer.special_tokens(meta), template)


def _tokenizer_from(source: str, revision: str | None, convert: bool) -> _Tokenizer:
    """The tokenizer that `--tokenizer` names: a directory, a tokenizer.json, a .gguf
    file or a cached hub id."""
    path, _ = model_path.resolve(source, revision)
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_tokenizer(GGUFFile(path), convert)
    if path.is_file() and path.name.endswith(".json"):
        _, specials, template = hf_loader.tokenizer_info(path.parent)
        return _Tokenizer(str(path), specials, template)
    if path.is_dir():
        return _Tokenizer(*hf_loader.tokenizer_info(path))
    raise ModelLoadError(f"tokenizer {source!r} is not a directory, tokenizer.json or .gguf file")


def _find_gguf(directory: Path) -> Path | None:
    """The one .gguf file of a directory without config.json (a GGUF hub repo)."""
    if (directory / "config.json").is_file():
        return None
    files = sorted(directory.glob("*.gguf"))
    if len(files) > 1:
        raise ModelLoadError(
            f"{directory} holds several GGUF files ({[f.name for f in files]}); "
            "pass the path of the one to load"
        )
    return files[0] if files else None


def load_model(
    model: str | None,
    *,
    load_format: str = "auto",
    tokenizer: str | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    skip_tokenizer_init: bool = False,
) -> LoadedModel:
    """Load `model` (see the module docstring); raises ModelLoadError on bad input.

    `dtype` casts the weights (None keeps them as stored; GGUF weights are float32).
    `skip_tokenizer_init` leaves `tokenizer_path` None, for token-id prompts.
    """
    if load_format not in LOAD_FORMATS:
        raise ModelLoadError(f"load_format must be one of {LOAD_FORMATS}, got {load_format!r}")
    path, served_name = model_path.resolve(model, revision)
    dummy = load_format == "dummy"
    gguf_path = path if path.is_file() else _find_gguf(path)

    if gguf_path is not None:
        if gguf_path.suffix != ".gguf":
            raise ModelLoadError(
                f"{gguf_path} is a file but not a .gguf file; pass a model directory instead"
            )
        if load_format == "safetensors":
            raise ModelLoadError(f"{gguf_path} is a GGUF file but load_format='safetensors'")
        gguf = GGUFFile(gguf_path)
        config = gguf_loader.hf_config(gguf)
        weights = {} if dummy else gguf_loader.state_dict(gguf, config)
        tok = None if tokenizer else _gguf_tokenizer(gguf, convert=not skip_tokenizer_init)
        generation = gguf_loader.generation_config(gguf.metadata)
    else:
        if load_format == "gguf":
            raise ModelLoadError(f"{path} holds no .gguf file but load_format='gguf'")
        config = hf_loader.read_config(path)
        weights = {} if dummy else hf_loader.load_state_dict(path, None)
        tok = None if tokenizer else _Tokenizer(*hf_loader.tokenizer_info(path))
        generation = hf_loader.generation_config(path)

    if tokenizer:
        tok = _tokenizer_from(tokenizer, revision, convert=not skip_tokenizer_init)
    assert tok is not None
    if dtype is not None:
        weights = {name: t.to(dtype) for name, t in weights.items()}
    return LoadedModel(
        hf_config=config,
        state_dict=weights,
        tokenizer_path=None if skip_tokenizer_init else tok.path,
        special_tokens=tok.special_tokens,
        chat_template=tok.chat_template,
        generation_config=generation,
        served_model_name=served_name,
        model_path=str(gguf_path or path),
    )
