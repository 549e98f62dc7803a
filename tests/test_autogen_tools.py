"""AutoGen 0.14.1, unchanged, calling a registered tool through the real server with
`tool_choice="required"` in its config entry: the tool runs with valid arguments and the
follow-up request that carries the tool result is answered (HTTP 200), streamed and not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
from autogen import ConversableAgent, UserProxyAgent, register_function

from _server import Server, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # No tool-call parser: "required" needs none (decoding is constrained).
    override = json.dumps({"max_new_tokens": 48})
    with running_server("--max-model-len", "1024", "--override-generation-config", override) as s:
        yield s


def run_tool_chat(server: Server, stream: bool) -> tuple[list[str], list[dict[str, Any]]]:
    model = httpx.get(f"{server.v1}/models").json()["data"][0]["id"]
    entry = {
        "model": model,
        "api_key": "NotRequired",
        "base_url": server.v1,
        "tool_choice": "required",
        "temperature": 0,
        "stream": stream,
    }
    llm_config = {"config_list": [entry], "cache_seed": None}
    assistant = ConversableAgent(
        "assistant",
        llm_config=llm_config,
        system_message="You answer weather questions with the get_weather tool.",
    )
    user = UserProxyAgent(
        "user", code_execution_config=False, human_input_mode="NEVER", system_message=""
    )
    cities: list[str] = []

    def get_weather(city: Annotated[str, "Name of the city"]) -> str:
        cities.append(city)
        return f"Sunny, 22 C in {city}"

    register_function(
        get_weather,
        caller=assistant,
        executor=user,
        name="get_weather",
        description="Get the current weather for a city",
    )
    # Turn 1: the question -> a tool call; turn 2: the tool result -> the follow-up request
    # (tool_choice "required" again, so another call; the chat stops there).
    result = user.initiate_chat(assistant, message="What is the weather in Paris?", max_turns=2)
    return cities, list(result.chat_history)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_autogen_calls_the_registered_tool(server: Server, stream: bool):
    before = server.log().count('POST /v1/chat/completions HTTP/1.1" 200')
    cities, history = run_tool_chat(server, stream)
    assert cities, history
    assert all(isinstance(c, str) and c for c in cities), cities
    # The tool result went back to the model, and that follow-up request got a 200.
    tool_turns = [m for m in history if m.get("role") == "tool" or m.get("tool_responses")]
    assert tool_turns, history
    calls = [m for m in history if m.get("tool_calls")]
    assert len(calls) >= 2, history
    for m in calls:
        for call in m["tool_calls"]:
            assert call["function"]["name"] == "get_weather"
            assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
            assert call["id"]
    after = server.log().count('POST /v1/chat/completions HTTP/1.1" 200')
    assert after - before == 2
    assert "Traceback" not in server.log()


def test_auto_without_the_flags_is_a_400_naming_them(server: Server):
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object"}},
        }
    ]
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": tools, "max_tokens": 4}
    for choice in (None, "auto"):
        r = httpx.post(f"{server.v1}/chat/completions", json={**body, "tool_choice": choice})
        assert r.status_code == 400
        message = r.json()["error"]["message"]
        assert "--enable-auto-tool-choice" in message and "--tool-call-parser" in message
