"""rsllm: an LLM inference engine and OpenAI-compatible server with a Rust core."""

from __future__ import annotations

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

__all__ = [
    "EngineCoreError",
    "EngineDeadError",
    "InvalidRequestError",
    "ModelLoadError",
    "RsllmError",
    "TokenizerError",
    "UnknownRequestError",
    "__version__",
]
