"""Dequantization of GGUF tensors to float32 torch tensors.

The common types of small models (F32, F16, BF16, Q8_0, Q4_0, Q4_1) are decoded
here with torch ops, which use every core; the rest of the supported types go
through `gguf.quants.dequantize` (numpy, one core). Both give the same floats: the
arithmetic is the same float32 operations in the same order (a test checks it).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from rsllm.errors import ModelLoadError

Q = GGMLQuantizationType

# Types decoded by gguf's numpy code; IQ*/TQ*/MXFP4 are not supported.
_NUMPY_TYPES = frozenset({Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K})
_TORCH_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1})
SUPPORTED_TYPES = _TORCH_TYPES | _NUMPY_TYPES


def _half(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 scale stored at byte `start` of each block, as float32 `[n, 1]`."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).to(torch.float32)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """`[n, 16]` bytes -> `[n, 32]` float32: low nibbles first, then high nibbles.

    Written into one preallocated tensor that the caller scales in place: the
    weights are hundreds of megabytes, and temporaries of that size cost more
    than the arithmetic."""
    out = torch.empty((qs.shape[0], 32), dtype=torch.float32)
    out[:, :16] = qs & 0x0F
    out[:, 16:] = qs >> 4
    return out


def _dequant_blocks(blocks: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    # blocks: [n_blocks, type_size] uint8 -> [n_blocks, block_size] float32
    if qtype == Q.Q8_0:
        return blocks[:, 2:].contiguous().view(torch.int8).to(torch.float32).mul_(_half(blocks, 0))
    if qtype == Q.Q4_0:
        return _nibbles(blocks[:, 2:]).sub_(8).mul_(_half(blocks, 0))
    if qtype == Q.Q4_1:
        return _nibbles(blocks[:, 4:]).mul_(_half(blocks, 0)).add_(_half(blocks, 2))
    raise AssertionError(qtype)


def dequantize(
    raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]
) -> torch.Tensor:
    """Decode a GGUF tensor's bytes (`GGUFFile.raw`) to a float32 tensor of `shape`."""
    if qtype not in SUPPORTED_TYPES:
        supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
        raise ModelLoadError(
            f"GGUF quantization type {qtype.name} is not supported (supported: {supported})"
        )
    if qtype in _NUMPY_TYPES:
        return torch.from_numpy(np.ascontiguousarray(gguf_dequantize(raw, qtype))).reshape(shape)
    data = torch.from_numpy(raw).reshape(-1)
    if qtype == Q.F32:
        out = data.view(torch.float32).clone()
    elif qtype == Q.F16:
        out = data.view(torch.float16).to(torch.float32)
    elif qtype == Q.BF16:
        out = data.view(torch.bfloat16).to(torch.float32)
    else:
        _, type_size = GGML_QUANT_SIZES[qtype]
        out = _dequant_blocks(data.view(-1, type_size), qtype)
    return out.reshape(shape)
