"""RMSNorm, alone or fused with the residual add that precedes it in every layer.

Numerics follow Hugging Face's Llama: the residual sum is rounded to the model dtype
(it is what the next layer adds to), the norm is computed in float32 from that rounded
sum, rounded to the dtype, and then scaled by the weight.
"""

# Triton kernel parameters are typed by Triton at launch (pointers, scalars, constexprs).
# ruff: noqa: ANN001

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rsllm.kernels._common import check_last_dim_contiguous, pow2_at_least


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    stride_x_outer,
    stride_x_inner,
    stride_r,
    stride_o_outer,
    stride_o_inner,
    eps,
    INNER: tl.constexpr,
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    # One program per row; a 3-D input [T, H, D] has rows (t, h) with two strides.
    row = tl.program_id(0).to(tl.int64)
    outer = row // INNER
    inner = row % INNER
    cols = tl.arange(0, BLOCK)
    mask = cols < HIDDEN
    x_row = x_ptr + outer * stride_x_outer + inner * stride_x_inner
    x = tl.load(x_row + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # residual <- x + residual, rounded to the dtype as the unfused model does.
        r = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(residual_ptr.dtype.element_ty)
        tl.store(residual_ptr + row * stride_r + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / HIDDEN + eps)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = (xf * rstd).to(out_ptr.dtype.element_ty).to(tl.float32) * w
    o_row = out_ptr + outer * stride_o_outer + inner * stride_o_inner
    tl.store(o_row + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _num_warps(hidden: int) -> int:
    return 8 if hidden >= 4096 else 4 if hidden >= 1024 else 1


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * normalize(x) over the last dimension; x is [T, H] or [T, heads, D].

    Strided views (e.g. q and k inside a fused qkv, for Qwen3's q/k norm) are read in
    place; the result is a new contiguous tensor of x's shape and dtype.
    """
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be [T, H] or [T, heads, D], got {tuple(x.shape)}")
    hidden = x.shape[-1]
    if weight.shape != (hidden,):
        raise ValueError(f"weight must be [{hidden}], got {tuple(weight.shape)}")
    check_last_dim_contiguous("x", x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    inner = x.shape[1] if x.dim() == 3 else 1
    rows = x.shape[0] * inner
    if rows == 0:
        return out
    _rms_norm_kernel[(rows,)](
        x,
        x,  # no residual: never read
        weight,
        out,
        x.stride(0),
        x.stride(1) if x.dim() == 3 else 0,
        0,
        out.stride(0),
        out.stride(1) if x.dim() == 3 else 0,
        eps,
        INNER=inner,
        HIDDEN=hidden,
        BLOCK=pow2_at_least(hidden),
        HAS_RESIDUAL=False,
        num_warps=_num_warps(hidden),
    )
    return out


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """In place, as vLLM's op: residual <- x + residual; x <- rms_norm(residual) * weight.

    x, residual: [T, H] of one dtype, residual contiguous in its rows. Returns
    (x, residual), the same tensors, for chaining.
    """
    if x.dim() != 2 or residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(
            f"x and residual must be [T, H] of one dtype, got {tuple(x.shape)} {x.dtype}, "
            f"{tuple(residual.shape)} {residual.dtype}"
        )
    hidden = x.shape[1]
    if weight.shape != (hidden,):
        raise ValueError(f"weight must be [{hidden}], got {tuple(weight.shape)}")
    check_last_dim_contiguous("x", x)
    check_last_dim_contiguous("residual", residual)
    if x.shape[0] == 0:
        return x, residual
    _rms_norm_kernel[(x.shape[0],)](
        x,
        residual,
        weight,
        x,
        x.stride(0),
        0,
        residual.stride(0),
        x.stride(0),
        0,
        eps,
        INNER=1,
        HIDDEN=hidden,
        BLOCK=pow2_at_least(hidden),
        HAS_RESIDUAL=True,
        num_warps=_num_warps(hidden),
    )
    return x, residual
