"""The Llama-3-8B shape that the GPU benchmarks use, and its FLOP and byte counts."""

from __future__ import annotations

from typing import Any

CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128009,
}
# The engine's name for the same shapes (python/rsllm/model/configs/llama-3-8b).
RSLLM_MODEL = "llama-3-8b"


def layer_matmul_params(c: dict[str, Any] = CONFIG) -> int:
    """Weights multiplied per token in the decoder layers (qkv, o, gate/up, down)."""
    h, i, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * i
    return c["num_hidden_layers"] * per_layer


def total_params(c: dict[str, Any] = CONFIG) -> int:
    h, v = c["hidden_size"], c["vocab_size"]
    norms = (2 * c["num_hidden_layers"] + 1) * h
    return layer_matmul_params(c) + 2 * v * h + norms  # embedding + lm_head (untied)


def attention_flops(context_before: int, new_tokens: int, c: dict[str, Any] = CONFIG) -> int:
    """QK^T and PV for `new_tokens` causal queries after `context_before` cached ones."""
    per_key = 4 * c["num_attention_heads"] * c["head_dim"] * c["num_hidden_layers"]
    keys = sum(context_before + t + 1 for t in range(new_tokens))
    return per_key * keys


def request_flops(prompt: int, output: int, c: dict[str, Any] = CONFIG) -> int:
    """Model FLOPs of one request: every token through the layers, the lm_head only for
    the sampled rows (the last prompt token, then each output token but the last)."""
    tokens = prompt + output - 1  # the last sampled token is never fed back
    lm_head = 2 * c["hidden_size"] * c["vocab_size"] * output
    return 2 * layer_matmul_params(c) * tokens + lm_head + attention_flops(0, tokens, c)
