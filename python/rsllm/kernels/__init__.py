"""Triton kernels for the GPU path.

The kernels live in submodules that import Triton; this package imports them on first
use, so that `available()` can be asked on any machine:

- `store_kv`, `paged_attention` (`rsllm.kernels.attention`): the same functions as the
  torch reference in `rsllm.model.attention`; decode batches go to the split-K decode
  kernel, everything else to the prefill kernel;
- `rms_norm`, `fused_add_rms_norm` (`rsllm.kernels.norm`);
- `rotary_embedding` (`rsllm.kernels.rotary`);
- `silu_and_mul` (`rsllm.kernels.activation`).

Every wrapper is device-agnostic: under `TRITON_INTERPRET=1` the same kernels run on CPU
tensors, which is how the test suite checks them without a GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from rsllm.kernels.activation import silu_and_mul
    from rsllm.kernels.attention import paged_attention, store_kv
    from rsllm.kernels.norm import fused_add_rms_norm, rms_norm
    from rsllm.kernels.rotary import rotary_embedding

_LAZY = {
    "store_kv": "rsllm.kernels.attention",
    "paged_attention": "rsllm.kernels.attention",
    "rms_norm": "rsllm.kernels.norm",
    "fused_add_rms_norm": "rsllm.kernels.norm",
    "rotary_embedding": "rsllm.kernels.rotary",
    "silu_and_mul": "rsllm.kernels.activation",
}


def available() -> bool:
    """True where the kernels can run for real: Triton importable and a CUDA device."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


def __getattr__(name: str) -> Any:
    # Importing a kernel module imports Triton: an ImportError here means no Triton.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rsllm.kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "available",
    "fused_add_rms_norm",
    "paged_attention",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "store_kv",
]
