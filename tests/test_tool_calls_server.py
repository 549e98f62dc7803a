"""Function calling through the real server with the `openai` client: tool_choice
"required", a named function and "auto" (hermes parser), streamed and not; the
follow-up turn; and the bad-input 400s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from _server import Server, running_server

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "Name of the city"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}, "hours24": {"type": "boolean"}},
            "required": ["timezone", "hours24"],
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
# A hermes-format call, as a model trained on that format writes it.
HERMES_REGEX = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "[A-Z][a-z]{2,8}"\}\}\n</tool_call>'  # noqa: E501


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    args = ["--max-model-len", "1024", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    with running_server(*args) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="NotRequired", max_retries=0)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def check_calls(calls: list[Any]) -> None:
    assert calls, "no tool calls"
    for call in calls:
        assert call.id and call.type == "function"
        assert isinstance(call.function.arguments, str)
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def reassemble(chunks: Iterator[Any]) -> tuple[dict[int, dict[str, str]], str | None, str]:
    """Stream deltas put together the way AutoGen does: id, name and arguments are each
    concatenated across the deltas of a call index."""
    calls: dict[int, dict[str, str]] = {}
    finish, content = None, ""
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                acc = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                acc["id"] += tc.id or ""
                if tc.function is not None:
                    acc["name"] += tc.function.name or ""
                    acc["arguments"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    return calls, finish, content


def test_required_returns_valid_calls(client: openai.OpenAI, model: str):
    r = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        tools=[WEATHER, TIME],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    check_calls(choice.message.tool_calls)


def test_named_function_is_called(client: openai.OpenAI, model: str):
    r = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=40,
        temperature=0,
    )
    calls = r.choices[0].message.tool_calls
    check_calls(calls)
    assert [c.function.name for c in calls] == ["get_time"]
    assert r.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("tool_choice", ["required", "named"])
def test_streamed_call_reassembles_like_autogen(client: openai.OpenAI, model: str, tool_choice):
    choice: Any = (
        "required"
        if tool_choice == "required"
        else {"type": "function", "function": {"name": "get_weather"}}
    )
    chunks = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice=choice,
        max_tokens=40,
        temperature=0,
        stream=True,
    )
    calls, finish, content = reassemble(chunks)
    assert finish == "tool_calls" and content == ""
    assert set(calls) == set(range(len(calls))) and calls
    for call in calls.values():
        assert call["name"] == "get_weather"  # sent once, not repeated
        assert call["id"].startswith("chatcmpl-tool-") and call["id"].count("chatcmpl") == 1
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS["get_weather"])


def test_auto_parses_the_hermes_format(client: openai.OpenAI, model: str):
    # The tiny model does not know the hermes format, so a regex makes it write one; the
    # parser then finds the call in that real output.
    kwargs: dict[str, Any] = dict(
        model=model,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice="auto",
        max_tokens=80,
        temperature=0,
        extra_body={"structured_outputs": {"regex": HERMES_REGEX}},
    )
    r = client.chat.completions.create(**kwargs)
    assert r.choices[0].finish_reason == "tool_calls"
    check_calls(r.choices[0].message.tool_calls)
    calls, finish, _ = reassemble(client.chat.completions.create(**kwargs, stream=True))
    assert finish == "tool_calls"
    assert [c["name"] for c in calls.values()] == ["get_weather"]
    assert json.loads(calls[0]["arguments"]) == json.loads(
        r.choices[0].message.tool_calls[0].function.arguments
    )


def test_auto_plain_text_stays_content(client: openai.OpenAI, model: str):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello."}],
        tools=[WEATHER],
        max_tokens=8,
        temperature=0,
        extra_body={"structured_outputs": {"choice": ["Hello there!", "Hi!"]}},
    )
    message = r.choices[0].message
    assert message.tool_calls is None and message.content in ("Hello there!", "Hi!")
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("content_form", ["null", "empty", "absent"])
def test_follow_up_turn_is_accepted(server: Server, model: str, content_form: str):
    call = {
        "id": "call_abc123",
        "type": "function",
        "index": 0,  # AutoGen's streamed history carries it; ignored
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    assistant: dict[str, Any] = {"role": "assistant", "tool_calls": [call]}
    if content_form != "absent":
        assistant["content"] = None if content_form == "null" else ""
    body = {
        "model": model,
        "messages": [
            *QUESTION,
            assistant,
            {"role": "tool", "tool_call_id": "call_abc123", "content": "Sunny, 22 C in Paris"},
        ],
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_tokens": 40,
        "temperature": 0,
    }
    r = httpx.post(f"{server.v1}/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert message["tool_calls"] and message["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "'nope'"),
        ({"tools": None, "tool_choice": "required"}, "no tools"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "x"}}}},
            "Unsupported type",
        ),
        ({"structured_outputs": {"regex": "[a-"}}, "regex"),
        ({"response_format": {"type": "xml"}}, "response_format"),
    ],
    ids=["unknown-tool", "choice-without-tools", "bad-schema", "bad-regex", "bad-format"],
)
def test_bad_input_is_a_400(server: Server, extra: dict[str, Any], needle: str):
    body = {"messages": QUESTION, "tools": [WEATHER], "max_tokens": 4, **extra}
    body = {k: v for k, v in body.items() if v is not None}
    for stream in (False, True):
        r = httpx.post(f"{server.v1}/chat/completions", json={**body, "stream": stream})
        assert r.status_code == 400, r.text
        assert needle in r.json()["error"]["message"]
