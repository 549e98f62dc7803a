"""Scanning JSON that may still be growing (a stream): where a value ends, or None when
the text stops before it does. Tool-call parsers use it to find a call's name and the
raw text of its arguments while the model is still writing them."""

from __future__ import annotations

import json
from dataclasses import dataclass

_WS = " \t\r\n"


def skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def string_end(text: str, i: int) -> int | None:
    """End (exclusive) of the JSON string starting at text[i] == '"'."""
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    return None


def value_end(text: str, i: int) -> int | None:
    """End (exclusive) of the JSON value starting at text[i]; None if incomplete."""
    if i >= len(text):
        return None
    c = text[i]
    if c == '"':
        return string_end(text, i)
    if c in "{[":
        depth = 0
        j = i
        while j < len(text):
            c = text[j]
            if c == '"':
                end = string_end(text, j)
                if end is None:
                    return None
                j = end
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return None
    # A number or literal ends at a delimiter; at the end of the text it may still grow.
    j = i
    while j < len(text) and text[j] not in ",}]" + _WS:
        j += 1
    return j if j < len(text) else None


@dataclass
class PartialCall:
    """One tool call as far as it is written: `arguments` is the raw JSON text so far
    (it only ever grows), `complete` once the call's object is closed."""

    name: str | None = None
    arguments: str = ""
    complete: bool = False


def scan_call_object(
    text: str, i: int, args_keys: tuple[str, ...]
) -> tuple[PartialCall, int | None]:
    """The call object `{"name": ..., "<args key>": {...}}` starting at text[i] == '{';
    returns the call and the object's end (None while incomplete)."""
    call = PartialCall()
    j = i + 1
    while True:
        j = skip_ws(text, j)
        if j >= len(text):
            return call, None
        if text[j] == "}":
            call.complete = call.name is not None
            return call, j + 1
        if text[j] == ",":
            j += 1
            continue
        if text[j] != '"':
            return call, None
        key_end = string_end(text, j)
        if key_end is None:
            return call, None
        key = json.loads(text[j:key_end])
        j = skip_ws(text, key_end)
        if j >= len(text) or text[j] != ":":
            return call, None
        v = skip_ws(text, j + 1)
        end = value_end(text, v)
        if key == "name":
            if end is None:
                return call, None
            try:
                name = json.loads(text[v:end])
            except json.JSONDecodeError:
                return call, None
            call.name = name if isinstance(name, str) else None
        elif key in args_keys:
            call.arguments = text[v:end] if end is not None else text[v:]
        if end is None:
            return call, None
        j = end


def scan_call_sequence(text: str, i: int, args_keys: tuple[str, ...]) -> list[PartialCall]:
    """Call objects from text[i] on: a JSON array of them, or objects one after another
    (separated by whitespace, ',' or ';', as Llama 3 writes several calls)."""
    calls: list[PartialCall] = []
    i = skip_ws(text, i)
    if i < len(text) and text[i] == "[":
        i += 1
    while True:
        i = skip_ws(text, i)
        while i < len(text) and text[i] in ",;":
            i = skip_ws(text, i + 1)
        if i >= len(text) or text[i] != "{":
            return calls
        call, end = scan_call_object(text, i, args_keys)
        calls.append(call)
        if end is None:
            return calls
        i = end
