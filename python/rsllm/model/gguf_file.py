"""A fast reader of a GGUF file's header: metadata and tensor locations.

`gguf.GGUFReader` builds a numpy view per array element, which takes seconds on a
vocabulary of 50k tokens. This reader parses the same layout (GGUF v2/v3, little
endian) with `struct` over an mmap, and leaves tensor data in the mapped file until
it is dequantized. Constants (value and quantization types, block sizes) come from
the `gguf` package.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType

from rsllm.errors import ModelLoadError

# GGUFValueType codes -> struct format of one scalar.
_SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_NUMPY_DTYPES = {
    0: np.uint8,
    1: np.int8,
    2: np.uint16,
    3: np.int16,
    4: np.uint32,
    5: np.int32,
    6: np.float32,
    7: np.bool_,
    10: np.uint64,
    11: np.int64,
    12: np.float64,
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's location. `shape` is in torch order (outermost first)."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


class _Truncated(Exception):
    pass


class _Cursor:
    """Reads little-endian values from a buffer, failing cleanly at its end."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)

    def scalar(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise _Truncated
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        if self.pos + n > self.size:
            raise _Truncated
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.scalar("<I")
            count = self.scalar("<Q")
            if item_type == _STRING:
                return [self.string() for _ in range(count)]
            if item_type in _NUMPY_DTYPES:
                dtype = np.dtype(_NUMPY_DTYPES[item_type]).newbyteorder("<")
                end = self.pos + count * dtype.itemsize
                if end > self.size:
                    raise _Truncated
                values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
                self.pos = end
                return values.tolist()
            return [self.value(item_type) for _ in range(count)]
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise ValueError(f"unknown GGUF value type {vtype}")
        return self.scalar(fmt)


class GGUFFile:
    """The metadata and tensors of one GGUF file, mapped read-only (copy-on-write)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                # ACCESS_COPY gives writable arrays (torch warns on read-only ones)
                # without ever writing to the file.
                self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
            raise ModelLoadError(f"cannot read GGUF file {self.path}: {e}") from None
        try:
            self.metadata, self.tensors = self._parse()
        except _Truncated:
            raise ModelLoadError(
                f"GGUF file {self.path} is truncated: its header ends early "
                f"({len(self._buf)} bytes). Re-copy or re-download the file."
            ) from None
        except ValueError as e:
            raise ModelLoadError(f"{self.path} is not a valid GGUF file: {e}") from None

    def _parse(self) -> tuple[dict[str, Any], dict[str, GGUFTensor]]:
        cur = _Cursor(self._buf)
        if cur.scalar("<I") != GGUF_MAGIC:
            raise ValueError("bad magic number")
        version = cur.scalar("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version} (2 and 3 are supported)")
        n_tensors = cur.scalar("<Q")
        n_kv = cur.scalar("<Q")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.scalar("<I"))

        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.scalar("<I")
            dims = [cur.scalar("<Q") for _ in range(n_dims)]
            raw_type = cur.scalar("<I")
            rel_offset = cur.scalar("<Q")
            infos.append((name, dims, raw_type, rel_offset))

        alignment = int(metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
        data_start = -(-cur.pos // alignment) * alignment
        tensors: dict[str, GGUFTensor] = {}
        for name, dims, raw_type, rel_offset in infos:
            try:
                qtype = GGMLQuantizationType(raw_type)
            except ValueError:
                raise ValueError(f"tensor {name!r} has unknown type id {raw_type}") from None
            block_size, type_size = GGML_QUANT_SIZES[qtype]
            # GGUF lists dims innermost first; torch order is the reverse.
            shape = tuple(int(d) for d in reversed(dims))
            n_elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if shape and shape[-1] % block_size:
                raise ValueError(
                    f"tensor {name!r}: row of {shape[-1]} not a multiple of {block_size}"
                )
            nbytes = n_elements // block_size * type_size
            offset = data_start + rel_offset
            if offset + nbytes > len(self._buf):
                raise _Truncated
            tensors[name] = GGUFTensor(name, qtype, shape, offset, nbytes)
        return metadata, tensors

    def raw(self, tensor: GGUFTensor) -> np.ndarray:
        """The tensor's bytes as uint8 `[rows..., bytes_per_row]`, without a copy."""
        data = np.frombuffer(self._buf, dtype=np.uint8, count=tensor.nbytes, offset=tensor.offset)
        if not tensor.shape:
            return data
        block_size, type_size = GGML_QUANT_SIZES[tensor.qtype]
        return data.reshape(*tensor.shape[:-1], tensor.shape[-1] // block_size * type_size)
