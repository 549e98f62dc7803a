"""Tool-call parsers: find the calls in a model's output text (`--tool-call-parser NAME`).

The seam for function calling: `serving_chat` hands each choice's text to the parser
chosen at start-up. Parsers register themselves under vLLM's names (hermes,
llama3_json, mistral, pythonic); none is registered yet, so `--tool-call-parser` is
refused at start-up until one is.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rsllm.entrypoints.openai.protocol import DeltaMessage, ToolCall


@dataclass
class ExtractedToolCalls:
    """What a parser found in a finished output: the calls and the text beside them."""

    tools_called: bool
    tool_calls: list[ToolCall] = field(default_factory=list)
    content: str | None = None


class ToolParser(abc.ABC):
    """Parses one model family's tool-call format out of generated text."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @abc.abstractmethod
    def extract_tool_calls(self, text: str, tools: list[dict[str, Any]]) -> ExtractedToolCalls:
        """The calls in a complete output."""

    @abc.abstractmethod
    def extract_tool_calls_streaming(
        self, previous_text: str, delta_text: str
    ) -> DeltaMessage | None:
        """The delta to send for `delta_text` (None: hold it back for now). A call's id and
        name go out once, in its first delta; then argument fragments."""


TOOL_PARSERS: dict[str, type[ToolParser]] = {}


def register_tool_parser(name: str) -> Callable[[type[ToolParser]], type[ToolParser]]:
    def register(cls: type[ToolParser]) -> type[ToolParser]:
        TOOL_PARSERS[name] = cls
        return cls

    return register
