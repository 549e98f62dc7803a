"""The exception hierarchy of rsllm.

Every error rsllm raises on purpose is an `RsllmError`. Errors caused by the caller's
input also derive from the builtin a Python user would catch (`ValueError`,
`KeyError`), so that generic handlers keep working. The Rust core maps its one error
enum onto these classes in `rust/py.rs`.
"""

from __future__ import annotations


class RsllmError(Exception):
    """Base class of every error raised by rsllm."""


class InvalidRequestError(RsllmError, ValueError):
    """A request that can never succeed: bad parameters, a prompt that does not fit."""


class UnknownRequestError(RsllmError, KeyError):
    """A request id that the engine does not know (finished, aborted or never added)."""

    def __str__(self) -> str:
        # KeyError's str() wraps the message in quotes; keep the message readable.
        return str(self.args[0]) if self.args else ""


class TokenizerError(RsllmError, ValueError):
    """A tokenizer that does not load, or token ids outside its vocabulary."""


class ModelLoadError(RsllmError, ValueError):
    """A model path, file or format that cannot be loaded."""


class EngineCoreError(RsllmError, RuntimeError):
    """A broken invariant inside the Rust core (a bug, not the caller's fault)."""


class EngineDeadError(RsllmError, RuntimeError):
    """The engine loop stopped on an error; no further requests can be served."""


__all__ = [
    "EngineCoreError",
    "EngineDeadError",
    "InvalidRequestError",
    "ModelLoadError",
    "RsllmError",
    "TokenizerError",
    "UnknownRequestError",
]
