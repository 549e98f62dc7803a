"""Llama 3.x JSON format: the whole output is `{"name": ..., "parameters": {...}}` (several
separated by `;`), optionally after `<|python_tag|>`; anything else is plain content."""

from __future__ import annotations

from rsllm.entrypoints.openai.tool_parsers.base import Scan, ToolParser
from rsllm.entrypoints.openai.tool_parsers.partial_json import scan_call_sequence
from rsllm.entrypoints.openai.tool_parsers.registry import register_tool_parser

PYTHON_TAG = "<|python_tag|>"


@register_tool_parser("llama3_json")
class Llama3JsonToolParser(ToolParser):
    markers = (PYTHON_TAG,)

    def scan(self, text: str, final: bool) -> Scan:
        stripped = text.lstrip()
        if stripped.startswith(PYTHON_TAG):
            stripped = stripped[len(PYTHON_TAG) :].lstrip()
        elif not final and PYTHON_TAG.startswith(stripped):
            return Scan(content="", calls=[])  # blank or the tag's start: wait
        if not stripped.startswith("{"):
            if not final and not stripped:
                return Scan(content="", calls=[])
            return Scan(content=text, calls=[])
        return Scan(content="", calls=scan_call_sequence(stripped, 0, ("parameters", "arguments")))
