"""Triton kernels for the GPU path.

The kernels live in submodules that import Triton; this package itself does not, so
that `available()` can be asked on any machine:

- `rsllm.kernels.attention`: `store_kv` and `paged_attention`, the same functions as the
  torch reference in `rsllm.model.attention` (decode batches go to the split-K decode
  kernel, everything else to the prefill kernel);
- `rsllm.kernels.norm`: `rms_norm`, `fused_add_rms_norm`;
- `rsllm.kernels.rotary`: `rotary_embedding`;
- `rsllm.kernels.activation`: `silu_and_mul`.

Every wrapper is device-agnostic: under `TRITON_INTERPRET=1` the same kernels run on CPU
tensors, which is how the test suite checks them without a GPU.
"""

from __future__ import annotations

import importlib.util

import torch


def available() -> bool:
    """True where the kernels can run for real: Triton importable and a CUDA device."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


__all__ = ["available"]
