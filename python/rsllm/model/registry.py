"""Architecture name -> model class, and `build_model`."""

from __future__ import annotations

from typing import Any

import torch

from rsllm.errors import ModelLoadError
from rsllm.model.arch_config import ArchConfig
from rsllm.model.attention import AttentionBackend, select_backend
from rsllm.model.dummy import dummy_state_dict
from rsllm.model.llama import LlamaForCausalLM, MistralForCausalLM
from rsllm.model.qwen import Qwen2ForCausalLM, Qwen3ForCausalLM

MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def supported_architectures() -> list[str]:
    return sorted(MODEL_CLASSES)


def build_model(
    hf_config: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    *,
    max_model_len: int | None = None,
    attention_backend: str | AttentionBackend = "auto",
    seed: int = 0,
) -> LlamaForCausalLM:
    """Build a model from a HF config dict and load `state_dict` (HF names, any float dtype).

    `state_dict` None or empty gives random weights of the config's shapes
    (`rsllm.model.dummy.dummy_state_dict`, seeded by `seed`).
    `max_model_len` (default: the config's max_position_embeddings) sizes the rope table.
    """
    cfg = ArchConfig.from_hf(hf_config)
    cls = MODEL_CLASSES.get(cfg.architecture)
    if cls is None:
        raise ModelLoadError(
            f"architecture {cfg.architecture!r} is not supported; "
            f"supported: {', '.join(supported_architectures())}"
        )
    device = torch.device(device)
    max_len = int(max_model_len or cfg.max_position_embeddings)
    if cfg.sliding_window is not None and max_len > cfg.sliding_window:
        raise ModelLoadError(
            f"max_model_len={max_len} exceeds the model's sliding_window={cfg.sliding_window}, "
            "and sliding-window attention is not implemented; lower max_model_len"
        )
    backend = (
        select_backend(attention_backend, device)
        if isinstance(attention_backend, str)
        else attention_backend
    )
    model = cls(cfg, backend, max_len, dtype=dtype, device=device)
    if not state_dict:  # None, or the loader's empty dict for load_format="dummy"
        state_dict = dummy_state_dict(hf_config, dtype, device, seed)
    model.load_weights(state_dict.items())
    model.eval()
    return model
