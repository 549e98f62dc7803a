"""Hermes / Qwen format: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
one tag per call, text outside the tags is content."""

from __future__ import annotations

from rsllm.entrypoints.openai.tool_parsers.base import Scan, ToolParser, held_prefix
from rsllm.entrypoints.openai.tool_parsers.partial_json import (
    PartialCall,
    scan_call_object,
    skip_ws,
)
from rsllm.entrypoints.openai.tool_parsers.registry import register_tool_parser

START, END = "<tool_call>", "</tool_call>"


@register_tool_parser("hermes")
class HermesToolParser(ToolParser):
    markers = (START, END)

    def scan(self, text: str, final: bool) -> Scan:
        content: list[str] = []
        calls: list[PartialCall] = []
        i = 0
        while True:
            start = text.find(START, i)
            if start < 0:
                rest = text[i:]
                content.append(rest if final else rest[: len(rest) - held_prefix(rest, START)])
                break
            content.append(text[i:start])
            body = skip_ws(text, start + len(START))
            if body >= len(text) or text[body] != "{":
                break
            call, end = scan_call_object(text, body, ("arguments", "parameters"))
            calls.append(call)
            if end is None:
                break
            close = text.find(END, end)
            if close < 0:
                if not final:
                    break
                i = len(text)  # a missing close tag at the very end is tolerated
                continue
            i = close + len(END)
        joined = "".join(content)
        return Scan(content=joined.strip() if final else joined, calls=calls)
