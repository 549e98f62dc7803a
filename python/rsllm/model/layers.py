"""Building blocks shared by the model families: norms, rotary embedding, fused MLP.

Weights are plain tensors owned by `nn.Module`s named like HF's, except the fused ones
(`qkv_proj`, `gate_up_proj`), which `load_weights` fills shard by shard.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from rsllm.model import cpu_ops
from rsllm.model.arch_config import ArchConfig


def _param(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class Linear(nn.Module):
    """`y = x W^T (+ b)`. On a CPU, `pack()` reorders W once into oneDNN's blocked layout
    (`mkldnn._linear_pointwise`), about 2x faster than `F.linear` for decode-sized inputs;
    a single bf16 row goes to the Rust kernel (`cpu_ops.linear_row`), which streams W
    faster still."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = False,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.weight = _param(out_features, in_features, dtype=dtype, device=device)
        self.bias = _param(out_features, dtype=dtype, device=device) if bias else None
        self.packed: torch.Tensor | None = None
        # The one-row output, reused every step with its numpy view (allocating both
        # cost about a fifth of the Rust call at small sizes).
        self._row_out: cpu_ops.Buffer | None = None

    def pack(self) -> None:
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and cpu_ops.linear_row_supported(x, self.weight):
            if self._row_out is None:
                self._row_out = cpu_ops.Buffer.empty((1, self.weight.shape[0]), x.dtype)
            return cpu_ops.linear_row(x, self.weight, self.bias, self._row_out)
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


@functools.cache
def _onednn_packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN packs weights of this dtype on this CPU (fp16 needs AVX512-FP16 or
    AVX-NE-CONVERT: without them the reorder raises, e.g. on Zen 4)."""
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype))
    except RuntimeError:
        return False
    return True


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN packing pays for bf16/fp16 on CPUs; fp32 keeps `F.linear` (MKL), whose
    rounding matches transformers' so that fp32 greedy output compares token for token."""
    return (
        device.type == "cpu"
        and dtype in (torch.bfloat16, torch.float16)
        and torch.backends.mkldnn.is_available()
        and _onednn_packs(dtype)
    )


class RMSNorm(nn.Module):
    """RMSNorm with an optional fused residual add (`x + residual` is returned as the new
    residual, so each decoder layer does one add and one norm per sub-block). bf16 on a
    CPU runs both in one Rust pass (`cpu_ops.rms_norm`): torch's takes ~10 ops for it."""

    def __init__(self, size: int, eps: float, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = _param(size, dtype=dtype, device=device)
        self.eps = eps
        self.shape = (size,)
        self._row_out: cpu_ops.Buffer | None = None  # one-row output (see `Linear`)

    def _out(self, x: torch.Tensor) -> cpu_ops.Buffer | None:
        if x.dim() != 2 or x.shape[0] != 1:
            return None
        if self._row_out is None:
            self._row_out = cpu_ops.Buffer.empty(tuple(x.shape), x.dtype)
        return self._row_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_ops.fused_ops_supported(x):
            return cpu_ops.rms_norm(x, None, self.weight, self.eps, self._out(x))
        return F.rms_norm(x, self.shape, self.weight, self.eps)

    def forward_add(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if cpu_ops.fused_ops_supported(x) and residual.is_contiguous():
            out = cpu_ops.rms_norm(x, residual, self.weight, self.eps, self._out(x))
            return out, residual
        residual = x.add_(residual)  # x is a fresh activation: reuse its storage
        return F.rms_norm(residual, self.shape, self.weight, self.eps), residual


def rope_inv_freq(cfg: ArchConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] in float32, with the config's rope scaling."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    scaling = cfg.rope_scaling
    kind = cfg.rope_type
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, and the
        # band between them interpolated smoothly.
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """Neox-style rope (HF `rotate_half`) from a cos/sin table gathered once per step."""

    def __init__(
        self, cfg: ArchConfig, max_len: int, *, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        half = cfg.head_dim // 2
        freqs = torch.arange(max_len, dtype=torch.float32)[:, None] * rope_inv_freq(cfg)[None, :]
        cos, sin = freqs.cos(), freqs.sin()
        # rotate_half(x) * sin == flip_halves(x) * [-sin, sin]: one flip and an addcmul.
        self.register_buffer(
            "cos", torch.cat([cos, cos], -1).to(dtype=dtype, device=device), persistent=False
        )
        self.register_buffer(
            "sin", torch.cat([-sin, sin], -1).to(dtype=dtype, device=device), persistent=False
        )
        self.half = half

    def table(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for the step's tokens, each [T, 1, head_dim]."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D] -> [T, H, D], rotated by the per-token table of `RotaryEmbedding.table`."""
    t, h, d = x.shape
    swapped = x.view(t, h, 2, d // 2).flip(2).view(t, h, d)  # [x2, x1]
    return torch.addcmul(x * cos, swapped, sin)


class GatedMLP(nn.Module):
    """SwiGLU MLP with gate and up fused into one matmul (`gate_up_proj` = [gate; up])."""

    def __init__(self, cfg: ArchConfig, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        inter = cfg.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * inter, dtype=dtype, device=device)
        self.down_proj = Linear(inter, cfg.hidden_size, dtype=dtype, device=device)
        self.inter = inter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2 * inter]
        if cpu_ops.fused_ops_supported(gate_up):  # bf16 on a CPU: one Rust pass
            return self.down_proj(cpu_ops.silu_mul(gate_up))
        act = F.silu(gate_up[:, : self.inter]).mul_(gate_up[:, self.inter :])
        return self.down_proj(act)
