"""Llama family (Llama 2/3, Mistral, SmolLM): HF's module tree, over the paged KV cache.

`LlamaForCausalLM.model.layers[i].self_attn.qkv_proj` holds q, k and v stacked (and
`mlp.gate_up_proj` gate and up); `load_weights` maps HF's separate tensors onto them.
Qwen2 (q/k/v bias) and Qwen3 (q/k RMSNorm) reuse these modules (`qwen.py`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from rsllm.errors import ModelLoadError
from rsllm.model import cpu_ops
from rsllm.model.arch_config import ArchConfig
from rsllm.model.attention import AttentionBackend, AttentionMetadata
from rsllm.model.layers import (
    GatedMLP,
    Linear,
    RMSNorm,
    RotaryEmbedding,
    _param,
    apply_rope,
    can_pack,
)

KVCache = tuple[torch.Tensor, torch.Tensor]

# HF name piece -> (fused name piece, shard index)
_STACKED = {
    ".q_proj.": (".qkv_proj.", 0),
    ".k_proj.": (".qkv_proj.", 1),
    ".v_proj.": (".qkv_proj.", 2),
    ".gate_proj.": (".gate_up_proj.", 0),
    ".up_proj.": (".gate_up_proj.", 1),
}


class LlamaAttention(nn.Module):
    def __init__(
        self,
        cfg: ArchConfig,
        backend: AttentionBackend,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        self.qkv_proj = Linear(
            cfg.hidden_size, (hq + 2 * hkv) * d, bias=cfg.attention_bias, dtype=dtype, device=device
        )
        self.shard_sizes = (hq * d, hkv * d, hkv * d)
        self.o_proj = Linear(hq * d, cfg.hidden_size, dtype=dtype, device=device)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, device=device)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, device=device)
            self.qk_norm_weight: torch.Tensor | None = None  # [Hq + Hkv, D], built at load
        self.eps = cfg.rms_norm_eps
        self.scale = d**-0.5
        self.backend = backend
        # The cpu backend's rope and q/k/v split in one Rust pass (q/k norm would sit in
        # between).
        self.fused_rope = backend.name == "cpu" and not cfg.qk_norm

    def finish_loading(self) -> None:
        if self.qk_norm:
            hq, hkv = self.num_heads, self.num_kv_heads
            self.qk_norm_weight = torch.cat(
                [self.q_norm.weight.expand(hq, -1), self.k_norm.weight.expand(hkv, -1)]
            )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        t = x.shape[0]
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv_proj(x)  # [T, (Hq + 2Hkv) * D]
        key_cache, value_cache = kv_cache
        if self.fused_rope and cpu_ops.fused_rope_supported(qkv, key_cache):
            q, k, v = cpu_ops.rope(qkv, cos, sin, hq, hkv)
        else:
            qk = qkv[:, : (hq + hkv) * d].view(t, hq + hkv, d)
            if self.qk_norm:
                # q_norm and k_norm in one op: per-head RMSNorm, then each head's own weight.
                qk = F.rms_norm(qk, (d,), None, self.eps).mul_(self.qk_norm_weight)
            qk = apply_rope(qk, cos, sin)  # [T, Hq + Hkv, D]
            q, k = qk.split((hq, hkv), dim=1)
            v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
        self.backend.store_kv(k, v, key_cache, value_cache, meta)
        out = self.backend.attend(q, key_cache, value_cache, meta, self.scale)  # [T, Hq, D]
        return self.o_proj(out.reshape(t, hq * d))


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        cfg: ArchConfig,
        backend: AttentionBackend,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg, backend, dtype=dtype, device=device)
        self.mlp = GatedMLP(cfg, dtype=dtype, device=device)
        self.input_layernorm = RMSNorm(
            cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, device=device
        )
        self.post_attention_layernorm = RMSNorm(
            cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, device=device
        )

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = x
            h = self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.forward_add(x, residual)
        h = self.self_attn(h, cos, sin, kv_cache, meta)
        h, residual = self.post_attention_layernorm.forward_add(h, residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(
        self,
        cfg: ArchConfig,
        backend: AttentionBackend,
        max_model_len: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Module()
        self.embed_tokens.weight = _param(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, device=device
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(cfg, backend, dtype=dtype, device=device)
            for _ in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, device=device)
        self.rotary_emb = RotaryEmbedding(cfg, max_model_len, dtype=dtype, device=device)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        x = F.embedding(input_ids, self.embed_tokens.weight)  # [T, H]
        cos, sin = self.rotary_emb.table(positions)  # once per step, shared by all layers
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            x, residual = layer(x, residual, cos, sin, kv_cache, meta)
        assert residual is not None
        x, _ = self.norm.forward_add(x, residual)
        return x


class LlamaForCausalLM(nn.Module):
    """`forward(input_ids[T], positions[T], kv_caches, meta) -> hidden[T, H]`;
    `compute_logits(hidden[S, H]) -> logits[S, V]` (float32; `compute_raw_logits`: the
    model's dtype)."""

    def __init__(
        self,
        cfg: ArchConfig,
        backend: AttentionBackend,
        max_model_len: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg, backend, max_model_len, dtype=dtype, device=device)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, dtype=dtype, device=device)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.pack_linears = can_pack(device, dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.compute_raw_logits(hidden).float()

    def compute_raw_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits in the model's dtype (greedy sampling needs no float32 copy)."""
        return self.lm_head(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in, stacking q/k/v and gate/up; every parameter must be set."""
        params = dict(self.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb." in name:
                continue
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            shard = None
            for hf_piece, (piece, idx) in _STACKED.items():
                if hf_piece in name:
                    name, shard = name.replace(hf_piece, piece), idx
                    break
            param = params.get(name)
            if param is None:
                raise ModelLoadError(f"unexpected weight {name!r} for {self.config.architecture}")
            target = param.data
            if shard is not None:
                sizes = self._shard_sizes(name)
                start = sum(sizes[:shard])
                target = target.narrow(0, start, sizes[shard])
                name = f"{name}#{shard}"
            if tuple(target.shape) != tuple(tensor.shape):
                raise ModelLoadError(
                    f"weight {name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(target.shape)}"
                )
            target.copy_(tensor)
            loaded.add(name)
        expected = self._expected_names(params)
        missing = sorted(expected - loaded)
        if missing:
            raise ModelLoadError(f"weights missing from the checkpoint: {missing[:5]}...")
        self.finish_loading()

    def finish_loading(self) -> None:
        for layer in self.model.layers:
            layer.self_attn.finish_loading()
        if self.pack_linears:
            for module in self.modules():
                if isinstance(module, Linear):
                    module.pack()

    def _shard_sizes(self, fused_name: str) -> tuple[int, ...]:
        if ".qkv_proj." in fused_name:
            return self.model.layers[0].self_attn.shard_sizes
        inter = self.config.intermediate_size
        return (inter, inter)

    def _expected_names(self, params: dict[str, nn.Parameter]) -> set[str]:
        names: set[str] = set()
        for name in params:
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            if ".qkv_proj." in name:
                names.update(f"{name}#{i}" for i in range(3))
            elif ".gate_up_proj." in name:
                names.update(f"{name}#{i}" for i in range(2))
            else:
                names.add(name)
        return names


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral: Llama's modules (sliding window is checked against max_model_len)."""
