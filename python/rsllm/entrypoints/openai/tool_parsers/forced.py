"""The outputs of forced tool calls (decoding constrained by `structured_outputs.tool_schema`):
`tool_choice="required"` writes `[{"name": ..., "parameters": {...}}, ...]`, a named
function writes its arguments object only."""

from __future__ import annotations

from rsllm.entrypoints.openai.tool_parsers.base import Scan, ToolParser
from rsllm.entrypoints.openai.tool_parsers.partial_json import (
    PartialCall,
    scan_call_sequence,
    skip_ws,
    value_end,
)


class RequiredToolParser(ToolParser):
    def scan(self, text: str, final: bool) -> Scan:
        return Scan(content="", calls=scan_call_sequence(text, 0, ("parameters", "arguments")))


class NamedToolParser(ToolParser):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def scan(self, text: str, final: bool) -> Scan:
        start = skip_ws(text, 0)
        end = value_end(text, start) if start < len(text) else None
        arguments = text[start:end] if end is not None else text[start:]
        return Scan(content="", calls=[PartialCall(self.name, arguments, complete=end is not None)])
