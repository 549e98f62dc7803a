"""`SamplingParams`: how to sample one request, with vLLM's field names and defaults."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from rsllm.errors import InvalidRequestError

_SAMPLING_EPS = 1e-5


class RequestOutputKind(enum.Enum):
    """What each `RequestOutput` of a streaming consumer carries (vLLM's enum)."""

    CUMULATIVE = 0  # all text and tokens so far
    DELTA = 1  # only what is new since the previous output
    FINAL_ONLY = 2  # a single output when the request finishes


@dataclass
class StructuredOutputsParams:
    """Constrained decoding: exactly one of the fields is set (vLLM's names)."""

    json: dict[str, Any] | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    def __post_init__(self) -> None:
        given = [f.name for f in fields(self) if getattr(self, f.name) not in (None, False)]
        if len(given) != 1:
            raise InvalidRequestError(
                "structured_outputs needs exactly one of json, regex, choice, grammar, "
                f"json_object; got {given or 'none'}"
            )
        if self.choice is not None and (
            not self.choice or not all(isinstance(c, str) for c in self.choice)
        ):
            raise InvalidRequestError("structured_outputs.choice must be a non-empty list of str")


@dataclass
class SamplingParams:
    """Sampling parameters of one request. Invalid values raise `ValueError`
    (`InvalidRequestError`) naming the field."""

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    structured_outputs: StructuredOutputsParams | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    detokenize: bool = True
    # Filled in by the engine from the model's generation config, never by users.
    _eos_token_ids: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        if self.logit_bias is not None:
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
        self._verify()

    @staticmethod
    def _fail(name: str, message: str) -> None:
        raise InvalidRequestError(f"{name} {message}")

    def _verify(self) -> None:
        f = self._fail
        if not isinstance(self.n, int) or self.n < 1:
            f("n", f"must be an integer >= 1, got {self.n!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                f(name, f"must be in [-2, 2], got {value}")
        if not self.repetition_penalty > 0.0:
            f("repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        if not (self.temperature >= 0.0 and math.isfinite(self.temperature)):
            f("temperature", f"must be a finite number >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            f("top_p", f"must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            f("top_k", f"must be -1 (disable), 0 or a positive integer, got {self.top_k!r}")
        if not 0.0 <= self.min_p <= 1.0:
            f("min_p", f"must be in [0, 1], got {self.min_p}")
        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            f("max_tokens", f"must be at least 1, got {self.max_tokens!r}")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            f("min_tokens", f"must be >= 0, got {self.min_tokens!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            f("min_tokens", f"must be <= max_tokens={self.max_tokens}, got {self.min_tokens}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                f(name, f"must be a non-negative integer, got {value!r}")
        if any(not s for s in self.stop):  # type: ignore[union-attr]
            f("stop", "must not contain empty strings")
        if any((not isinstance(t, int)) or t < 0 for t in self.stop_token_ids):  # type: ignore[union-attr]
            f("stop_token_ids", "must be non-negative integers")
        if self.seed is not None and not isinstance(self.seed, int):
            f("seed", f"must be an integer, got {self.seed!r}")
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            f("allowed_token_ids", "must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature < _SAMPLING_EPS

    @property
    def all_stop_token_ids(self) -> list[int]:
        return sorted(set(self.stop_token_ids or []) | set(self._eos_token_ids))

    def clone(self, **changes: Any) -> SamplingParams:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return SamplingParams(**values)

    @classmethod
    def from_optional(cls, **kwargs: Any) -> SamplingParams:
        """Build from keyword arguments where None means "use the default"."""
        return cls(**{k: v for k, v in kwargs.items() if v is not None})


def normalize_stop(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)
