"""Tool-call parsers (hermes, llama3_json, mistral, pythonic, forced) on finished text and
on streams cut at every possible place: the reassembled stream (as AutoGen concatenates
id, name and arguments) equals the finished parse, and id/name go out exactly once."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from rsllm.entrypoints.openai.tool_parsers import (
    TOOL_PARSERS,
    NamedToolParser,
    RequiredToolParser,
    ToolParser,
)
from rsllm.entrypoints.openai.tool_parsers.tool_choice import plan_tools
from rsllm.errors import InvalidRequestError
from rsllm.structured_outputs import named_tool_schema, required_tools_schema

WEATHER = '{"city": "Paris \\"centre\\"", "units": ["c", "f"], "n": 12}'
CASES: list[tuple[str, str, str | None, list[tuple[str, str]]]] = [
    (
        "hermes",
        "Let me look.\n<tool_call>\n"
        f'{{"name": "get_weather", "arguments": {WEATHER}}}\n</tool_call>',
        "Let me look.",
        [("get_weather", WEATHER)],
    ),
    (
        "hermes",
        '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>'
        '{"name": "b", "arguments": {"x": 1}}</tool_call>',
        None,
        [("a", "{}"), ("b", '{"x": 1}')],
    ),
    (
        "llama3_json",
        f'<|python_tag|>{{"name": "get_weather", "parameters": {WEATHER}}}; '
        '{"name": "t", "parameters": {}}',
        None,
        [("get_weather", WEATHER), ("t", "{}")],
    ),
    (
        "mistral",
        f'Sure. [TOOL_CALLS][{{"name": "get_weather", "arguments": {WEATHER}}}]',
        "Sure.",
        [("get_weather", WEATHER)],
    ),
    (
        "pythonic",
        '[get_weather(city="Paris \\"centre\\"", units=["c", "f"], n=12), now()]',
        None,
        [("get_weather", WEATHER), ("now", "{}")],
    ),
]


def stream(parser: ToolParser, text: str, cuts: list[int]) -> tuple[str, dict[int, dict[str, str]]]:
    content, calls, prev = "", {}, ""
    bounds = [0, *cuts, len(text)]
    deltas = []
    for a, b in itertools.pairwise(bounds):
        deltas.append(parser.extract_tool_calls_streaming(prev, text[a:b]))
        prev += text[a:b]
    deltas.append(parser.finish_streaming(text))
    headers: dict[int, int] = {}
    for d in deltas:
        if d is None:
            continue
        content += d.content or ""
        for tc in d.tool_calls or []:
            acc = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            fn = tc.function or {}
            if tc.id:
                headers[tc.index] = headers.get(tc.index, 0) + 1
            acc["id"] += tc.id or ""
            acc["name"] += fn.get("name", "")
            acc["arguments"] += fn.get("arguments", "")
    assert all(n == 1 for n in headers.values()), headers
    return content, calls


@pytest.mark.parametrize(("name", "text", "content", "expected"), CASES)
def test_finished_text(name: str, text: str, content: str | None, expected: list[tuple[str, str]]):
    found = TOOL_PARSERS[name]().extract_tool_calls(text)
    assert found.tools_called and found.content == content
    got = [(c.function.name, json.loads(c.function.arguments)) for c in found.tool_calls]
    assert got == [(n, json.loads(a)) for n, a in expected]
    assert len({c.id for c in found.tool_calls}) == len(expected)


@pytest.mark.parametrize(("name", "text", "content", "expected"), CASES)
@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_stream_reassembles(name: str, text: str, content: str | None, expected: Any, step: int):
    got_content, calls = stream(TOOL_PARSERS[name](), text, list(range(step, len(text), step)))
    assert got_content.strip() == (content or "")
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (n, json.loads(a)) for n, a in expected
    ]
    assert all(c["id"].startswith("chatcmpl-tool-") for c in calls.values())


@pytest.mark.parametrize("name", sorted(TOOL_PARSERS))
@pytest.mark.parametrize(
    "text", ["Hello there, how are you?", "<tool_", "[TOOL", "{not json", "[x"]
)
def test_plain_text_is_content(name: str, text: str):
    found = TOOL_PARSERS[name]().extract_tool_calls(text)
    assert not found.tools_called and found.tool_calls == [] and found.content == text
    got_content, calls = stream(TOOL_PARSERS[name](), text, list(range(1, len(text))))
    assert calls == {} and got_content == text


def test_forced_parsers():
    text = '[{"name": "a", "parameters": {"x": [1, 2]}}, {"name": "b", "parameters": {}}]'
    found = RequiredToolParser().extract_tool_calls(text)
    assert [(c.function.name, c.function.arguments) for c in found.tool_calls] == [
        ("a", '{"x": [1, 2]}'),
        ("b", "{}"),
    ]
    _, calls = stream(NamedToolParser("f"), '{"q": "x y"}', list(range(1, 12)))
    assert calls[0]["name"] == "f" and json.loads(calls[0]["arguments"]) == {"q": "x y"}
    # Cut off by max_tokens: no call at all, the text stays content.
    cut = RequiredToolParser().extract_tool_calls('[{"name": "a", "parameters": {"x": ')
    assert not cut.tools_called and cut.content


def test_tool_schemas():
    tools = [
        {"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "b"}},
    ]
    schema = required_tools_schema(tools, parallel=False)
    assert schema["maxItems"] == 1 and len(schema["items"]["anyOf"]) == 2
    assert named_tool_schema(tools, "b") == {"type": "object", "properties": {}}
    with pytest.raises(InvalidRequestError, match="not in tools"):
        named_tool_schema(tools, "c")
    with pytest.raises(InvalidRequestError, match="name"):
        required_tools_schema([{"type": "function", "function": {}}])


def test_plan_tools_modes():
    tools = [{"type": "function", "function": {"name": "a"}}]
    common: dict[str, Any] = dict(
        parallel_tool_calls=None,
        response_format=None,
        structured_outputs=None,
        enable_auto_tool_choice=True,
        tool_call_parser="hermes",
    )
    assert plan_tools(tools=tools, tool_choice=None, **common).mode == "auto"
    none = plan_tools(tools=tools, tool_choice="none", **common)
    assert none.mode == "none" and none.template_tools is None
    required = plan_tools(tools=tools, tool_choice="required", **common)
    assert required.structured_outputs is not None and required.structured_outputs.json
    with pytest.raises(InvalidRequestError, match="forced tool_choice"):
        plan_tools(
            tools=tools,
            tool_choice="required",
            **{**common, "response_format": {"type": "json_object"}},
        )
    with pytest.raises(InvalidRequestError, match="tool_choice"):
        plan_tools(tools=tools, tool_choice={"type": "function"}, **common)
