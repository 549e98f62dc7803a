"""Tool-call parsers: find the calls in a model's output text (`--tool-call-parser NAME`,
vLLM's names: hermes, llama3_json, mistral, pythonic), and the forced formats of
`tool_choice="required"` and a named function. See `base.ToolParser`."""

from __future__ import annotations

from rsllm.entrypoints.openai.tool_parsers import hermes, llama3_json, mistral, pythonic
from rsllm.entrypoints.openai.tool_parsers.base import ExtractedToolCalls, ToolParser
from rsllm.entrypoints.openai.tool_parsers.forced import NamedToolParser, RequiredToolParser
from rsllm.entrypoints.openai.tool_parsers.registry import TOOL_PARSERS, register_tool_parser

del hermes, llama3_json, mistral, pythonic  # imported to register themselves

__all__ = [
    "TOOL_PARSERS",
    "ExtractedToolCalls",
    "NamedToolParser",
    "RequiredToolParser",
    "ToolParser",
    "register_tool_parser",
]
