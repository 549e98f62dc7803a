"""Qwen2 and Qwen3: Llama's module tree with q/k/v bias (Qwen2) or q/k RMSNorm (Qwen3).

`ArchConfig.from_hf` sets `attention_bias` for qwen2 and `qk_norm` for qwen3; the Llama
modules honour both flags, so these classes only give the architectures their names.
"""

from __future__ import annotations

from rsllm.model.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2 / Qwen2.5: bias on q, k and v projections."""


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3 (dense): per-head RMSNorm on q and k before rope, no q/k/v bias by default."""
