"""A Llama-architecture GGUF file as a Hugging Face config and state dict.

The config comes from the `llama.*` metadata, the weights are dequantized to float32
and renamed to the HF parameter names, and the row permutation that llama.cpp's
converter applies to the Q and K projections (its rotary embedding pairs adjacent
dimensions, HF's pairs the two halves of a head) is undone.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from rsllm.errors import ModelLoadError
from rsllm.model.dequant import dequantize
from rsllm.model.gguf_file import GGUFFile

# GGUF tensor name (after `blk.N.`) -> HF name (after `model.layers.N.`).
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# Computed from the config at run time, not weights.
_SKIPPED = frozenset({"rope_freqs.weight"})
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str | None:
    """The HF parameter name of a GGUF tensor, or None if it is not a llama tensor."""
    m = _LAYER_RE.fullmatch(gguf_name)
    if m:
        layer, part, kind = m.groups()
        if part in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
        return None
    base, _, kind = gguf_name.rpartition(".")
    if base in _TOP_NAMES and kind in ("weight", "bias"):
        return f"{_TOP_NAMES[base]}.{kind}"
    return None


def _arch(meta: dict[str, Any]) -> str:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelLoadError(
            f"GGUF architecture {arch!r} is not supported: GGUF loading supports 'llama' "
            "(Llama 2/3, Mistral, SmolLM); use a Hugging Face directory for other models"
        )
    return arch


def hf_config(gguf: GGUFFile) -> dict[str, Any]:
    """The Hugging Face config.json content described by the file's metadata."""
    meta = gguf.metadata
    arch = _arch(meta)

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    try:
        hidden = int(get("embedding_length"))
        heads = int(get("attention.head_count"))
        config: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": int(get("feed_forward_length")),
            "num_hidden_layers": int(get("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(get("attention.head_count_kv", heads)),
            "head_dim": int(get("attention.key_length", hidden // heads)),
            "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            "rope_theta": float(get("rope.freq_base", 10000.0)),
            "max_position_embeddings": int(get("context_length", 2048)),
        }
    except (TypeError, ValueError):
        raise ModelLoadError(
            f"GGUF file {gguf.path} lacks the llama.* metadata that describes the model shape"
        ) from None
    embed = gguf.tensors.get("token_embd.weight")
    if embed is None:
        raise ModelLoadError(f"GGUF file {gguf.path} has no token_embd.weight tensor")
    config["vocab_size"] = int(get("vocab_size", embed.shape[0]))
    config["rope_scaling"] = _rope_scaling(get)
    config["tie_word_embeddings"] = "output.weight" not in gguf.tensors
    config["attention_bias"] = "blk.0.attn_q.bias" in gguf.tensors
    config["mlp_bias"] = False
    config["hidden_act"] = "silu"
    config["bos_token_id"] = meta.get("tokenizer.ggml.bos_token_id")
    config["eos_token_id"] = meta.get("tokenizer.ggml.eos_token_id")
    config["torch_dtype"] = "float32"
    return config


def _rope_scaling(get: Any) -> dict[str, Any] | None:
    kind = get("rope.scaling.type")
    factor = get("rope.scaling.factor")
    if kind in (None, "none") or factor is None:
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "factor": float(factor)}
    original = get("rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def _unpermute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Invert llama.cpp's Q/K permutation: within each head, rows were reordered from
    [first half, second half] to interleaved pairs."""
    rows = weight.shape[0]
    # [n_heads, head_dim / 2, 2, ...] -> [n_heads, 2, head_dim / 2, ...]
    return (
        weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
    )


def state_dict(gguf: GGUFFile, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every weight of the file, float32, under its HF name."""
    out: dict[str, torch.Tensor] = {}
    for name, info in gguf.tensors.items():
        if name in _SKIPPED:
            continue
        target = hf_name(name)
        if target is None:
            raise ModelLoadError(f"GGUF tensor {name!r} is not part of a llama model")
        tensor = dequantize(gguf.raw(info), info.qtype, info.shape)
        if ".self_attn.q_proj." in target:
            tensor = _unpermute(tensor, config["num_attention_heads"])
        elif ".self_attn.k_proj." in target:
            tensor = _unpermute(tensor, config["num_key_value_heads"])
        out[target] = tensor
    return out


def generation_config(meta: dict[str, Any]) -> dict[str, Any]:
    """The generation defaults a GGUF implies: its BOS/EOS/pad ids."""
    out: dict[str, Any] = {}
    for name, key in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
    ):
        value = meta.get(f"tokenizer.ggml.{key}")
        if value is not None:
            out[name] = int(value)
    return out
