"""Every kernel, launched by its real wrapper with production shapes (Llama-3-8B: head
dim 128, 32 query and 8 kv heads, hidden 4096) in bf16, compiles for Hopper (sm_90) down
to a cubin, on any machine: Triton's compiler and ptxas need no GPU. The interpreter
tests check the numbers; this checks what the interpreter cannot (types, layouts,
shared memory, the Hopper code path). The launch is recorded instead of run."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("triton") is None, reason="triton is not installed"
    ),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") == "1", reason="kernels are interpreted here"
    ),
]

_TRITON_DTYPES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
}
_LAUNCH_OPTIONS = ("num_warps", "num_stages")


@dataclass
class Launch:
    kernel: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Stands in for a JIT kernel: `kernel[grid](...)` records instead of launching."""

    def __init__(self, kernel: Any, launches: list[Launch]) -> None:
        self.kernel = kernel
        self.launches = launches

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        def launch(*args: Any, **kwargs: Any) -> None:
            self.launches.append(Launch(self.kernel, args, kwargs))

        return launch


def record(
    monkeypatch: pytest.MonkeyPatch, launches: list[Launch], module: Any, *names: str
) -> None:
    for name in names:
        monkeypatch.setattr(module, name, Recorder(getattr(module, name), launches))


def compile_for_hopper(launch: Launch) -> Any:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = [p.name for p in launch.kernel.params]
    values = dict(zip(params, launch.args, strict=False))
    values.update({k: v for k, v in launch.kwargs.items() if k not in _LAUNCH_OPTIONS})
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    for param in launch.kernel.params:
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _TRITON_DTYPES[value.dtype]
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            signature[param.name] = "i64" if abs(int(value)) >= 2**31 else "i32"
    options = {k: launch.kwargs[k] for k in _LAUNCH_OPTIONS if k in launch.kwargs}
    source = ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def ptxas_spill_bytes(compiled: Any) -> int:
    """Bytes spilled to local memory, from the ptxas that ships inside Triton's wheel."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("Triton's bundled ptxas is missing")
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        arch = f"-arch=sm_{compiled.metadata.target.arch}a"
        cmd = [str(ptxas), "-v", arch, str(ptx), "-o", str(Path(tmp) / "kernel.cubin")]
        report = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    return sum(int(n) for n in re.findall(r"(\d+) bytes spill stores", report))


def attention_batch(decode: bool) -> dict[str, Any]:
    bf16 = torch.bfloat16
    requests = 4
    q_len = 1 if decode else 8
    seq_lens = torch.full((requests,), 300, dtype=torch.int32)
    return dict(
        query=torch.zeros((requests * q_len, 32, 128), dtype=bf16),
        key_cache=torch.zeros((100, 16, 8, 128), dtype=bf16),
        value_cache=torch.zeros((100, 16, 8, 128), dtype=bf16),
        query_start_loc=torch.arange(0, requests + 1, dtype=torch.int32) * q_len,
        seq_lens=seq_lens,
        block_tables=torch.zeros((requests, 20), dtype=torch.int32),
        scale=128**-0.5,
        max_query_len=q_len,
        max_seq_len=300,
    )


def test_attention_kernels_compile_for_hopper(monkeypatch):
    from rsllm.kernels import attention, decode_attention, kv_store, prefill_attention

    launches: list[Launch] = []
    record(monkeypatch, launches, kv_store, "_store_kv_kernel")
    record(monkeypatch, launches, decode_attention, "_decode_split_kernel")
    record(monkeypatch, launches, decode_attention, "_decode_reduce_kernel")
    record(monkeypatch, launches, prefill_attention, "_prefill_kernel")
    key = torch.zeros((4, 8, 128), dtype=torch.bfloat16)
    cache = torch.zeros((100, 16, 8, 128), dtype=torch.bfloat16)
    attention.store_kv(key, key, cache, cache, torch.zeros(4, dtype=torch.int64))
    attention.paged_attention(**attention_batch(decode=False))
    batch = attention_batch(decode=True)
    out = torch.empty_like(batch["query"])
    for splits in (1, 4):
        decode_attention.paged_decode_attention(
            *(batch[k] for k in ("query", "key_cache", "value_cache", "query_start_loc")),
            batch["seq_lens"],
            batch["block_tables"],
            batch["scale"],
            batch["max_seq_len"],
            out,
            num_splits=splits,
        )
    names = [launch.kernel.__name__ for launch in launches]
    assert names == [
        "_store_kv_kernel",
        "_prefill_kernel",
        "_decode_split_kernel",  # one split: writes the output itself
        "_decode_split_kernel",  # four splits: partials, then the reduce
        "_decode_reduce_kernel",
    ]
    for launch in launches:
        compiled = compile_for_hopper(launch)
        assert compiled.asm["cubin"], launch.kernel.__name__
        # Hopper's shared memory per block is 227 KiB.
        assert compiled.metadata.shared <= 227 * 1024, launch.kernel.__name__
        # The attention loops must keep their tiles and gathered pointers in registers.
        assert ptxas_spill_bytes(compiled) == 0, launch.kernel.__name__
        if launch.kernel.__name__ == "_prefill_kernel":
            # The prefill tiles are big enough for Hopper's warp-group MMA (wgmma).
            assert "warp_group_dot" in compiled.asm["ttgir"]


def test_layer_kernels_compile_for_hopper(monkeypatch):
    from rsllm.kernels import activation, norm, rotary

    launches: list[Launch] = []
    record(monkeypatch, launches, norm, "_rms_norm_kernel")
    record(monkeypatch, launches, rotary, "_rotary_kernel")
    record(monkeypatch, launches, activation, "_silu_and_mul_kernel")
    bf16 = torch.bfloat16
    hidden = torch.zeros((4, 4096), dtype=bf16)
    weight = torch.zeros(4096, dtype=bf16)
    norm.fused_add_rms_norm(hidden, hidden.clone(), weight, 1e-5)
    norm.rms_norm(torch.zeros((4, 32, 128), dtype=bf16), torch.zeros(128, dtype=bf16), 1e-5)
    qkv = torch.zeros((4, (32 + 16) * 128), dtype=bf16)
    q = qkv[:, : 32 * 128].view(4, 32, 128)
    k = qkv[:, 32 * 128 : 40 * 128].view(4, 8, 128)
    cos_sin = torch.zeros((8192, 128), dtype=torch.float32)
    rotary.rotary_embedding(torch.zeros(4, dtype=torch.int64), q, k, cos_sin)
    activation.silu_and_mul(torch.zeros((4, 2 * 14336), dtype=bf16))
    assert len(launches) == 4
    for launch in launches:
        assert compile_for_hopper(launch).asm["cubin"], launch.kernel.__name__
