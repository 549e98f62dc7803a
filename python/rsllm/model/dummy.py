"""Random weights of a config's shapes (`load_format="dummy"`), for benchmarks at any
size with no weight files."""

from __future__ import annotations

from typing import Any

import torch


def head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def param_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF parameter name -> shape, for the Llama, Mistral, Qwen2 and Qwen3 families."""
    hidden = config["hidden_size"]
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    n_q = config["num_attention_heads"] * head_dim(config)
    n_kv = config.get("num_key_value_heads", config["num_attention_heads"]) * head_dim(config)
    # Qwen2 has q/k/v biases without saying so in its config.
    qkv_bias = bool(config.get("attention_bias")) or config.get("model_type") == "qwen2"
    qk_norm = config.get("model_type") == "qwen3"

    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "self_attn.q_proj.weight"] = (n_q, hidden)
        shapes[p + "self_attn.k_proj.weight"] = (n_kv, hidden)
        shapes[p + "self_attn.v_proj.weight"] = (n_kv, hidden)
        if qkv_bias:
            shapes[p + "self_attn.q_proj.bias"] = (n_q,)
            shapes[p + "self_attn.k_proj.bias"] = (n_kv,)
            shapes[p + "self_attn.v_proj.bias"] = (n_kv,)
        if qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (head_dim(config),)
            shapes[p + "self_attn.k_norm.weight"] = (head_dim(config),)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, n_q)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
    shapes["model.norm.weight"] = (hidden,)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def dummy_state_dict(
    hf_config: dict[str, Any],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random weights for `hf_config`: norms at 1, the rest N(0, initializer_range),
    made directly on `device` so that an 8B model never passes through the host."""
    std = float(hf_config.get("initializer_range", 0.02))
    generator = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, shape in param_shapes(hf_config).items():
        if name.endswith("norm.weight"):
            out[name] = torch.ones(shape, dtype=dtype, device=device)
        elif name.endswith(".bias"):
            out[name] = torch.zeros(shape, dtype=dtype, device=device)
        else:
            t = torch.empty(shape, dtype=dtype, device=device)
            out[name] = t.normal_(0.0, std, generator=generator)
    return out
