"""Mistral format: `[TOOL_CALLS]` then a JSON array of `{"name": ..., "arguments": {...}}`;
the text before the marker is content."""

from __future__ import annotations

from rsllm.entrypoints.openai.tool_parsers.base import Scan, ToolParser, held_prefix
from rsllm.entrypoints.openai.tool_parsers.partial_json import scan_call_sequence
from rsllm.entrypoints.openai.tool_parsers.registry import register_tool_parser

MARKER = "[TOOL_CALLS]"


@register_tool_parser("mistral")
class MistralToolParser(ToolParser):
    markers = (MARKER,)

    def scan(self, text: str, final: bool) -> Scan:
        at = text.find(MARKER)
        if at < 0:
            content = text if final else text[: len(text) - held_prefix(text, MARKER)]
            return Scan(content=content.strip() if final else content, calls=[])
        content = text[:at]
        calls = scan_call_sequence(text, at + len(MARKER), ("arguments", "parameters"))
        return Scan(content=content.strip() if final else content, calls=calls)
