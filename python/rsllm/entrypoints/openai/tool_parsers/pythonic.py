"""Pythonic format (Llama 3.2/4, ToolACE): the output is a Python list of calls,
`[get_weather(city="Paris"), f(x=1)]`, optionally inside `<|python_start|>...<|python_end|>`.
A call's arguments go out whole, once its closing parenthesis is written."""

from __future__ import annotations

import ast
import json
from typing import Any

from rsllm.entrypoints.openai.tool_parsers.base import Scan, ToolParser
from rsllm.entrypoints.openai.tool_parsers.partial_json import PartialCall
from rsllm.entrypoints.openai.tool_parsers.registry import register_tool_parser

START, END = "<|python_start|>", "<|python_end|>"


def _call_spans(body: str) -> list[tuple[str | None, str | None]]:
    """(name, source of the whole call or None while open) for each top-level call."""
    out: list[tuple[str | None, str | None]] = []
    i, n = 0, len(body)
    while i < n:
        while i < n and body[i] in " \t\r\n,":
            i += 1
        if i >= n or body[i] == "]":
            break
        paren = body.find("(", i)
        if paren < 0:
            out.append((None, None))
            break
        name = body[i:paren].strip()
        depth, j, quote = 0, paren, ""
        while j < n:
            c = body[j]
            if quote:
                if c == "\\":
                    j += 1
                elif c == quote:
                    quote = ""
            elif c in "'\"":
                quote = c
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        if j >= n:
            out.append((name, None))
            break
        out.append((name, body[i : j + 1]))
        i = j + 1
    return out


def _arguments(source: str) -> str | None:
    """The keyword arguments of a call's source as a JSON object, or None if it is not a
    call with literal keyword arguments."""
    try:
        node = ast.parse(source, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call) or node.args:
        return None
    values: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            return None
        try:
            values[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            return None
    try:
        return json.dumps(values, ensure_ascii=False)
    except (TypeError, ValueError):
        return None


@register_tool_parser("pythonic")
class PythonicToolParser(ToolParser):
    markers = (START, END)

    def scan(self, text: str, final: bool) -> Scan:
        body = text.strip()
        if body.startswith(START):
            body = body[len(START) :].split(END, 1)[0].strip()
        elif not final and (not body or START.startswith(body)):
            return Scan(content="", calls=[])
        if not body.startswith("["):
            return Scan(content=text, calls=[])
        calls = []
        for name, source in _call_spans(body[1:]):
            if not name or not name.isidentifier():
                break
            if source is None:
                calls.append(PartialCall(name=name))
                break
            args = _arguments(source)
            # Unparseable arguments stay "" and incomplete: the text is then content.
            calls.append(PartialCall(name=name, arguments=args or "", complete=args is not None))
        return Scan(content="", calls=calls)
