"""Engine settings as plain dataclasses, one per concern, with vLLM's field names.

Each validates itself in `__post_init__` and raises ValueError naming the field.
Unknown keyword arguments raise TypeError (dataclass behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a dtype is resolved, not by `import rsllm.config`
    import torch

# vLLM's spellings of each dtype, mapped to ours.
_DTYPE_ALIASES = {
    "auto": "auto",
    "float32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
}
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")


@dataclass
class ModelConfig:
    """Which model to load and how (vLLM's `--model`, `--dtype`, `--load-format`, ...).

    `model=None` is the embedded default, SmolLM2-135M-Instruct.
    """

    model: str | None = None
    tokenizer: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    load_format: str = "auto"
    seed: int = 0
    served_model_name: str | None = None
    revision: str | None = None
    skip_tokenizer_init: bool = False
    # "auto": the model's generation_config.json; "vllm": none of it; else a directory.
    generation_config: str = "auto"
    override_generation_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("model", "tokenizer", "served_model_name", "revision"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
        if not isinstance(self.dtype, str) or self.dtype.lower() not in _DTYPE_ALIASES:
            raise ValueError(
                f"dtype must be one of 'auto', 'float32', 'bfloat16', 'float16', got {self.dtype!r}"
            )
        self.dtype = _DTYPE_ALIASES[self.dtype.lower()]
        if self.max_model_len is not None and (
            isinstance(self.max_model_len, bool)
            or not isinstance(self.max_model_len, int)
            or self.max_model_len <= 0
        ):
            raise ValueError(
                f"max_model_len must be a positive integer or None, got {self.max_model_len!r}"
            )
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {self.load_format!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.skip_tokenizer_init, bool):
            raise ValueError(
                f"skip_tokenizer_init must be a bool, got {self.skip_tokenizer_init!r}"
            )
        if not isinstance(self.generation_config, str) or not self.generation_config:
            raise ValueError(
                "generation_config must be 'auto', 'vllm' or a directory, "
                f"got {self.generation_config!r}"
            )
        if not isinstance(self.override_generation_config, dict):
            raise ValueError(
                "override_generation_config must be a dict, "
                f"got {self.override_generation_config!r}"
            )

    def get_max_model_len(self, hf_config: dict[str, Any]) -> int:
        """`max_model_len`, or the model's `max_position_embeddings` when unset."""
        limit = hf_config.get("max_position_embeddings")
        if self.max_model_len is None:
            if not limit:
                raise ValueError(
                    "max_model_len must be given: the model config has no max_position_embeddings"
                )
            return int(limit)
        if limit and self.max_model_len > int(limit):
            raise ValueError(
                f"max_model_len={self.max_model_len} exceeds the model's "
                f"max_position_embeddings={limit}"
            )
        return self.max_model_len


def _cpu_has_fast_bf16() -> bool:
    import torch

    # AVX512-BF16 or AMX make bf16 matmuls faster than fp32; elsewhere bf16 is emulated.
    cpu = torch.cpu
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        if check is not None and check():
            return True
    return False


def resolve_dtype(
    dtype: str, device: torch.device | str, checkpoint_dtype: str | None = None
) -> torch.dtype:
    """The torch dtype to run in.

    "auto": bfloat16 on a CUDA GPU that has it (float16 on older GPUs) and on a CPU
    with fast bf16 (AVX512-BF16/AMX); float32 on other CPUs. A float16 checkpoint is
    not run in float16 on a CPU (slow and overflow-prone there). `checkpoint_dtype` is
    the config's `torch_dtype`; a float32 checkpoint on a CPU stays float32.
    """
    import torch

    name = _DTYPE_ALIASES.get(dtype.lower()) if isinstance(dtype, str) else None
    if name is None:
        raise ValueError(
            f"dtype must be one of 'auto', 'float32', 'bfloat16', 'float16', got {dtype!r}"
        )
    if name != "auto":
        return getattr(torch, name)
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if checkpoint_dtype == "float32":
        return torch.float32
    return torch.bfloat16 if kind == "cpu" and _cpu_has_fast_bf16() else torch.float32
