"""The Rust CPU kernels of `rsllm._core`, called on torch tensors through numpy views
(no copies; bfloat16 travels as its uint16 bits, which numpy can hold)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from rsllm import _core

KERNEL_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor, bfloat16 as uint16."""
    return (t.view(torch.uint16) if t.dtype == torch.bfloat16 else t).numpy()


# id(tensor) -> (weak reference, numpy view) for tensors that live across steps.
_VIEWS: dict[int, tuple[weakref.ref[torch.Tensor], np.ndarray]] = {}


def persistent_numpy(t: torch.Tensor) -> np.ndarray:
    """`as_numpy` memoised for long-lived tensors (weights, KV caches): each layer of each
    step would otherwise make ~10 views again, about 1 us apiece."""
    hit = _VIEWS.get(id(t))
    if hit is not None and hit[0]() is t:
        return hit[1]
    view = as_numpy(t)
    key = id(t)
    _VIEWS[key] = (weakref.ref(t, lambda _: _VIEWS.pop(key, None)), view)
    return view


@dataclass(frozen=True)
class Buffer:
    """A CPU tensor reused across steps, with its numpy view made once. Holds one op's
    output until the same op runs again: only for outputs that the step consumes
    before then (a module's single-row decode output)."""

    tensor: torch.Tensor
    array: np.ndarray

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: torch.dtype) -> Buffer:
        t = torch.empty(shape, dtype=dtype)
        return Buffer(t, as_numpy(t))


def fused_ops_supported(x: torch.Tensor) -> bool:
    """Whether the fused ops (`rms_norm`, `silu_mul`) take x: bfloat16 on a CPU. float32
    keeps torch's ops, whose rounding the token-for-token comparison with transformers
    was checked against."""
    return x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.is_contiguous()


def rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    out: Buffer | None = None,
) -> torch.Tensor:
    """RMSNorm(x) * weight in one pass; with `residual`, `residual += x` first (in place)
    and the norm of the sum. Rows are the leading dimensions of x. Into `out` when given."""
    if out is None:
        result = torch.empty_like(x)
        array = as_numpy(result)
    else:
        result, array = out.tensor, out.array
    _core.rms_norm(
        as_numpy(x),
        None if residual is None else as_numpy(residual),
        persistent_numpy(weight),
        eps,
        array,
        KERNEL_DTYPES[x.dtype],
    )
    return result


def fused_rope_supported(qkv: torch.Tensor, key_cache: torch.Tensor) -> bool:
    """bfloat16 on a CPU (float32 keeps torch's rope: see `fused_ops_supported`)."""
    return (
        qkv.device.type == "cpu"
        and qkv.dtype == torch.bfloat16
        and key_cache.dtype == torch.bfloat16
        and qkv.is_contiguous()
    )


def rope(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, num_kv_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rope on q and k of the fused projections [T, (Hq + 2 Hkv) * D] in one pass: the
    rotated q [T, Hq, D], the rotated k and v [T, Hkv, D], each contiguous."""
    t = qkv.shape[0]
    d = qkv.shape[1] // (num_heads + 2 * num_kv_heads)
    q = qkv.new_empty(t, num_heads, d)
    k, v = qkv.new_empty(t, num_kv_heads, d), qkv.new_empty(t, num_kv_heads, d)
    arrays = map(as_numpy, (qkv, cos, sin, q, k, v))
    _core.rope(*arrays, KERNEL_DTYPES[qkv.dtype])
    return q, k, v


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    slot_mapping: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
) -> None:
    """Each token's K and V ([T, Hkv, D] each, contiguous) into its slot of the tiled
    caches, in one pass that asks for the next tokens' cache lines ahead."""
    _core.store_kv(
        as_numpy(key),
        as_numpy(value),
        slot_mapping.numpy(),
        persistent_numpy(key_cache),
        persistent_numpy(value_cache),
        KERNEL_DTYPES[key.dtype],
    )


def linear_row_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """One bf16 row on a CPU: the single-stream decode step, where streaming W is all
    the work (measured faster than oneDNN's packed kernel there)."""
    return (
        x.dim() == 2
        and x.shape[0] == 1
        and x.dtype == torch.bfloat16
        and weight.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and x.is_contiguous()
        and weight.is_contiguous()
    )


def linear_row(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: Buffer | None = None
) -> torch.Tensor:
    """x [1, K] @ weight[N, K]^T (+ bias) -> [1, N], in one Rust pass over W (into `out`
    when given)."""
    if out is None:
        out = Buffer.empty((1, weight.shape[0]), x.dtype)
    _core.linear_row(
        as_numpy(x),
        persistent_numpy(weight),
        None if bias is None else persistent_numpy(bias),
        out.array,
    )
    return out.tensor


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """torch.argmax(x, dim=-1) for a 2-D CPU tensor in float32 or bfloat16 (first maximum;
    NaN counts as the maximum), without torch's slow bf16 reduction or a float copy."""
    if x.dtype not in KERNEL_DTYPES:  # float16: torch's, on an exact float32 copy
        return x.float().argmax(dim=-1)
    out = torch.empty(x.shape[0], dtype=torch.int64)
    _core.argmax_rows(as_numpy(x.contiguous()), out.numpy(), KERNEL_DTYPES[x.dtype])
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for `gate_up` [T, 2I] = [gate | up] -> [T, I] in one pass."""
    t, two_i = gate_up.shape
    out = gate_up.new_empty(t, two_i // 2)
    _core.silu_mul(as_numpy(gate_up), as_numpy(out), KERNEL_DTYPES[gate_up.dtype])
    return out
