"""rsllm: an LLM inference engine and OpenAI-compatible server with a Rust core.

`from rsllm import LLM, SamplingParams` for offline batch generation; `python -m
rsllm.serve` for the OpenAI-compatible server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rsllm._core import __version__
from rsllm.errors import (
    EngineCoreError,
    EngineDeadError,
    InvalidRequestError,
    ModelLoadError,
    RsllmError,
    TokenizerError,
    UnknownRequestError,
)
from rsllm.outputs import CompletionOutput, Logprob, RequestOutput
from rsllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

if TYPE_CHECKING:
    from rsllm.engine.arg_utils import EngineArgs
    from rsllm.engine.async_llm import AsyncLLM
    from rsllm.engine.llm_engine import LLMEngine
    from rsllm.entrypoints.llm import LLM

# The engine pulls in torch and the model code: import it on first use only, so that
# `import rsllm` (and the core, the errors and SamplingParams) stays light.
_LAZY = {
    "LLM": "rsllm.entrypoints.llm",
    "LLMEngine": "rsllm.engine.llm_engine",
    "AsyncLLM": "rsllm.engine.async_llm",
    "EngineArgs": "rsllm.engine.arg_utils",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rsllm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "LLM",
    "AsyncLLM",
    "CompletionOutput",
    "EngineArgs",
    "EngineCoreError",
    "EngineDeadError",
    "InvalidRequestError",
    "LLMEngine",
    "Logprob",
    "ModelLoadError",
    "RequestOutput",
    "RequestOutputKind",
    "RsllmError",
    "SamplingParams",
    "StructuredOutputsParams",
    "TokenizerError",
    "UnknownRequestError",
    "__version__",
]
