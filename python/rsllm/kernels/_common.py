"""Small helpers shared by the kernel wrappers (no kernels here)."""

from __future__ import annotations

import functools

import torch
import triton

# Triton's tl.dot needs every dimension to be at least 16 on a GPU.
MIN_DOT_DIM = 16


def dot_precision(dtype: torch.dtype) -> str:
    """The tl.dot precision for `dtype`: exact fp32 products (no tf32) for float32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def pow2_at_least(n: int, floor: int = 1) -> int:
    """The smallest power of two that is >= max(n, floor)."""
    return max(triton.next_power_of_2(n), floor)


@functools.lru_cache(maxsize=8)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def parallel_units(device: torch.device) -> int:
    """How many programs the device runs at once, roughly: SMs on CUDA.

    Other devices (the interpreter on the CPU) report a small constant so that the
    split heuristics stay deterministic and cheap there.
    """
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else 0)
    return 4


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    """Kernels index the last dimension densely; any other stride is free."""
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, got {t.stride()}")
