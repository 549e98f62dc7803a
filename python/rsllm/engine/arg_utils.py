"""`EngineArgs`: the engine's settings, with vLLM's names and defaults, and their CLI flags.

One dataclass is both the keyword surface of `AsyncLLM.from_engine_args` and the
command line of `rsllm serve`, so that a vLLM command line maps onto it flag for flag.
Flags that vLLM command lines often carry but that change nothing here are accepted
and logged as ignored (`ignored_flag_warnings`); a value rsllm cannot honour is a
`ValueError` naming the field.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
_LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
_SCHEDULING_POLICIES = ("fcfs", "priority")
_HUMAN_INT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)\s*$")
# vLLM's convention: a lowercase suffix is decimal (1k = 1000), uppercase binary (1K = 1024).
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_SUFFIX.update({"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40})


def parse_human_int(text: str) -> int:
    """Parse `2048`, `2k` (2000), `2K` (2048), `1.5G` ... as an int (argparse type)."""
    match = _HUMAN_INT.match(str(text))
    if match is None:
        raise argparse.ArgumentTypeError(f"expected an integer such as 2048, 4k or 1G: {text!r}")
    number, suffix = match.groups()
    value = float(number) * _SUFFIX[suffix]
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def _json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


@dataclass
class EngineArgs:
    """Everything needed to build an engine; field names and defaults are vLLM's."""

    model: str | None = None  # None: the embedded default model (SmolLM2-135M-Instruct GGUF)
    tokenizer: str | None = None  # None: the model's own tokenizer
    served_model_name: list[str] | None = None  # None: derived from `model`
    dtype: str = "auto"
    max_model_len: int | None = None  # None: the model's own context length
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: the engine decides
    block_size: int = 16
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    kv_cache_memory_bytes: int | None = None  # None: sized from gpu_memory_utilization / RAM
    gpu_memory_utilization: float = 0.9
    load_format: str = "auto"
    seed: int = 0
    generation_config: str = "auto"  # "auto" (the model's), "vllm" (none), or a folder
    override_generation_config: dict[str, Any] | None = None
    scheduling_policy: str = "fcfs"
    # Overlapped loop: schedule step N+1 before step N's samples are known.
    async_scheduling: bool = False
    skip_tokenizer_init: bool = False
    revision: str | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    disable_log_stats: bool = False
    trust_remote_code: bool = False
    max_logprobs: int = 20

    def __post_init__(self) -> None:
        if isinstance(self.served_model_name, str):
            self.served_model_name = [self.served_model_name]
        if self.served_model_name is not None:
            names = list(self.served_model_name)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"served_model_name must be non-empty strings, got {names!r}")
            self.served_model_name = names
        if self.override_generation_config is None:
            self.override_generation_config = {}
        self._verify()

    def _verify(self) -> None:
        def positive(name: str, allow_none: bool) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        if self.tensor_parallel_size != 1:
            raise ValueError(
                f"tensor_parallel_size={self.tensor_parallel_size} is not supported: rsllm "
                "runs on one device (tensor parallelism is planned, see DESIGN.md); "
                "use --tensor-parallel-size 1"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.load_format not in _LOAD_FORMATS:
            raise ValueError(
                f"load_format must be one of {_LOAD_FORMATS}, got {self.load_format!r}"
            )
        if self.scheduling_policy not in _SCHEDULING_POLICIES:
            raise ValueError(
                f"scheduling_policy must be one of {_SCHEDULING_POLICIES}, "
                f"got {self.scheduling_policy!r}"
            )
        positive("max_model_len", allow_none=True)
        positive("max_num_seqs", allow_none=False)
        positive("max_num_batched_tokens", allow_none=True)
        positive("block_size", allow_none=False)
        positive("kv_cache_memory_bytes", allow_none=True)
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.override_generation_config, dict):
            raise ValueError(
                "override_generation_config must be a dict, got "
                f"{type(self.override_generation_config).__name__}"
            )
        if isinstance(self.max_logprobs, bool) or not (
            isinstance(self.max_logprobs, int) and self.max_logprobs >= 0
        ):
            raise ValueError(
                f"max_logprobs must be a non-negative integer, got {self.max_logprobs}"
            )

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add the engine's flags (vLLM's spellings) to `parser`."""
        g = parser.add_argument_group("engine")
        g.add_argument(
            "--model",
            help="Model to serve: an HF-layout folder, a .gguf file, or a name in the local "
            "HF cache. Default: the embedded SmolLM2-135M-Instruct GGUF.",
        )
        g.add_argument("--tokenizer", help="Tokenizer folder or name, if not the model's own.")
        g.add_argument("--revision", help="Model revision, for a model read from the HF cache.")
        g.add_argument(
            "--served-model-name",
            nargs="+",
            help="Name(s) the API accepts in `model`; the first is the one responses report. "
            "Default: the --model argument.",
        )
        g.add_argument(
            "--dtype",
            default="auto",
            choices=_DTYPES,
            help="Weights and activations dtype; auto: the checkpoint's (float32 on a CPU "
            "for quantized GGUF files).",
        )
        g.add_argument(
            "--max-model-len",
            type=parse_human_int,
            help="Context length (prompt + output) in tokens, e.g. 1024, 4k or 4K. "
            "Default: the model's own.",
        )
        g.add_argument(
            "--max-num-seqs",
            type=parse_human_int,
            default=256,
            help="Most requests in one step of the batch.",
        )
        g.add_argument(
            "--max-num-batched-tokens",
            type=parse_human_int,
            help="Token budget of one step (long prompts are prefilled in chunks). "
            "Default: 512 on a CPU, 2048 on a GPU (with chunked prefill).",
        )
        g.add_argument(
            "--block-size", type=int, default=16, help="Tokens per KV-cache block (power of two)."
        )
        g.add_argument(
            "--enable-prefix-caching",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="Reuse the KV cache of a prompt prefix seen before.",
        )
        g.add_argument(
            "--enable-chunked-prefill",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="Split long prompts over several steps (always on here; accepted for vLLM "
            "command lines).",
        )
        g.add_argument(
            "--kv-cache-memory-bytes",
            type=parse_human_int,
            help="Memory for the KV cache, e.g. 2G; overrides --gpu-memory-utilization.",
        )
        g.add_argument(
            "--gpu-memory-utilization",
            type=float,
            default=0.9,
            help="Fraction of GPU memory the engine may use (ignored on a CPU).",
        )
        g.add_argument(
            "--load-format",
            default="auto",
            choices=_LOAD_FORMATS,
            help="Weight format; dummy: random weights (benchmarks).",
        )
        g.add_argument("--seed", type=int, default=0, help="Seed of the engine's sampler.")
        g.add_argument(
            "--generation-config",
            default="auto",
            help="Sampling defaults: auto (the model's generation_config), vllm (none), "
            "or a folder holding generation_config.json.",
        )
        g.add_argument(
            "--override-generation-config",
            type=_json_dict,
            help='JSON object over the generation config, e.g. \'{"max_new_tokens": 256, '
            '"temperature": 0.7}\'.',
        )
        g.add_argument(
            "--scheduling-policy",
            default="fcfs",
            choices=_SCHEDULING_POLICIES,
            help="fcfs: first come first served; priority: by the request's `priority` "
            "(lower first), then arrival.",
        )
        g.add_argument(
            "--async-scheduling",
            action="store_true",
            help="Schedule the next step before the current step's tokens are known "
            "(overlaps the core's bookkeeping with the forward pass on a GPU).",
        )
        g.add_argument(
            "--skip-tokenizer-init",
            action="store_true",
            help="Do not load a tokenizer (token-id prompts only).",
        )
        g.add_argument(
            "--enforce-eager",
            action="store_true",
            help="Accepted for vLLM command lines; rsllm does not capture CUDA graphs.",
        )
        g.add_argument(
            "--tensor-parallel-size",
            "-tp",
            type=int,
            default=1,
            help="Only 1 is supported (one device).",
        )
        g.add_argument(
            "--disable-log-stats",
            action="store_true",
            help="Do not log engine statistics periodically.",
        )
        g.add_argument(
            "--trust-remote-code",
            action="store_true",
            help="Accepted for vLLM command lines; rsllm never runs code from a model folder.",
        )
        g.add_argument(
            "--max-logprobs",
            type=int,
            default=20,
            help="Most logprobs / top_logprobs a request may ask for.",
        )
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        """Build from a namespace parsed by a parser that `add_cli_args` extended."""
        names = [f.name for f in fields(cls)]
        return cls(**{name: getattr(args, name) for name in names if hasattr(args, name)})


# Flags that vLLM command lines carry and that change nothing here, with why, for the
# start-up warning: (dest, why).
_IGNORED_FLAGS = {
    "tensor_parallel_size": "rsllm runs on one device",
    "enforce_eager": "rsllm does not capture CUDA graphs",
    "trust_remote_code": "rsllm never runs code shipped with a model",
    "enable_chunked_prefill": "the scheduler always chunks long prefills",
}


def explicit_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The `dest`s of the options that appear in `argv` (to warn only about given flags)."""
    by_flag = {flag: action.dest for action in parser._actions for flag in action.option_strings}
    given = set()
    for token in argv:
        flag = token.split("=", 1)[0]
        if flag in by_flag:
            given.add(by_flag[flag])
    return given


def ignored_flag_warnings(args: EngineArgs, given: set[str], *, cuda_available: bool) -> list[str]:
    """One message per accepted flag that has no effect in this run."""
    messages = [
        f"--{dest.replace('_', '-')} is accepted for vLLM compatibility and ignored: {why}"
        for dest, why in _IGNORED_FLAGS.items()
        if dest in given
        and not (dest == "enable_chunked_prefill" and not args.enable_chunked_prefill)
    ]
    if "gpu_memory_utilization" in given and not cuda_available:
        messages.append(
            "--gpu-memory-utilization is ignored on a CPU (use --kv-cache-memory-bytes "
            "to size the KV cache)"
        )
    return messages
