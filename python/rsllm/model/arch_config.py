"""`ArchConfig`: the shapes and options a model family needs, read once from a HF config dict.

HF configs spell the same thing several ways across versions (`rope_theta` + `rope_scaling`
in transformers 4, `rope_parameters` in 5; `head_dim` present or implied); this is the one
place that reconciles them, so the model code reads typed fields only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rsllm.errors import ModelLoadError

# Rope variants the layers implement (`layers.rope_inv_freq`).
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ArchConfig:
    """Typed view of a decoder-only HF config (Llama / Mistral / Qwen2 / Qwen3)."""

    architecture: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope_theta: float
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: bias on q/k/v projections
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before rope
    hidden_act: str = "silu"
    sliding_window: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def rope_type(self) -> str:
        return str(self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default")))

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ArchConfig:
        """Build from a HF `config.json` dict; raise `ModelLoadError` on what we cannot run."""
        archs = hf.get("architectures") or []
        model_type = str(hf.get("model_type", ""))
        architecture = str(archs[0]) if archs else _ARCH_BY_TYPE.get(model_type, "")
        try:
            hidden = int(hf["hidden_size"])
            heads = int(hf["num_attention_heads"])
            rope_params = dict(hf.get("rope_parameters") or {})
            rope_scaling = dict(hf.get("rope_scaling") or {})
            rope_theta = float(
                rope_params.get("rope_theta", hf.get("rope_theta", rope_scaling.get("rope_theta")))
                or 10000.0
            )
            scaling = {**rope_scaling, **rope_params}
            scaling.pop("rope_theta", None)
            eos = hf.get("eos_token_id")
            eos_ids = (
                tuple(int(e) for e in (eos if isinstance(eos, list) else [eos])) if eos else ()
            )
            use_sw = hf.get("use_sliding_window", model_type == "mistral")
            cfg = cls(
                architecture=architecture,
                model_type=model_type,
                vocab_size=int(hf["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(hf["intermediate_size"]),
                num_hidden_layers=int(hf["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(hf.get("num_key_value_heads") or heads),
                head_dim=int(hf.get("head_dim") or hidden // heads),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
                rope_theta=rope_theta,
                rope_scaling=scaling,
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                attention_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
                mlp_bias=bool(hf.get("mlp_bias", False)),
                qk_norm=model_type == "qwen3",
                hidden_act=str(hf.get("hidden_act", "silu")),
                sliding_window=int(hf["sliding_window"])
                if use_sw and hf.get("sliding_window")
                else None,
                eos_token_ids=eos_ids,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"model config is missing or has a bad field: {exc}") from exc
        cfg._verify()
        return cfg

    def _verify(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelLoadError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.hidden_act != "silu":
            raise ModelLoadError(f"hidden_act={self.hidden_act!r} is not supported (only silu)")
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ModelLoadError(
                f"rope type {self.rope_type!r} is not supported ({', '.join(SUPPORTED_ROPE_TYPES)})"
            )
        if self.mlp_bias:
            raise ModelLoadError("mlp_bias=True is not supported")


_ARCH_BY_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
