"""AutoGen 0.14.1, unchanged, against the real server: the two-agent conversation of the
vLLM guide, with the model's own chat template and with the guide's Mistral template."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from autogen import ConversableAgent, UserProxyAgent

from _server import Server, running_server

MISTRAL_TEMPLATE = Path(__file__).parent / "templates" / "autogenmistraltemplate.jinja"
MAX_NEW_TOKENS = 48  # the default model talks for thousands of tokens at temperature 1
pytestmark = pytest.mark.slow


def serve_args(*extra: str) -> list[str]:
    return [
        "--max-model-len",
        "512",
        "--override-generation-config",
        json.dumps({"max_new_tokens": MAX_NEW_TOKENS}),
        *extra,
    ]


@pytest.fixture(scope="module", params=["own-template", "mistral-template"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    extra = ["--chat-template", str(MISTRAL_TEMPLATE)] if request.param != "own-template" else []
    with running_server(*serve_args(*extra)) as s:
        yield s


def run_conversation(server: Server, max_turns: int) -> list[dict]:
    model = httpx.get(f"{server.v1}/models").json()["data"][0]["id"]
    llm_config = {
        "config_list": [{"model": model, "api_key": "NotRequired", "base_url": server.v1}],
        "cache_seed": None,
    }
    agent = ConversableAgent("agent", llm_config=llm_config, system_message="")
    user = UserProxyAgent(
        "user", code_execution_config=False, system_message="", human_input_mode="NEVER"
    )
    result = agent.initiate_chat(user, message="How can I help you today?", max_turns=max_turns)
    return list(result.chat_history)


def test_two_agent_conversation_completes(server: Server):
    # AutoGen sends no temperature or seed: the replies are sampled at temperature 1
    # from the engine's own generator (--seed 0), so a fresh server replays them.
    history = run_conversation(server, max_turns=3)
    # agent greets, user answers "" (no human, no code), agent replies (LLM), user "",
    # agent replies (LLM), user "".
    assert [m["role"] for m in history] == ["assistant", "user"] * 3
    assert history[0]["content"] == "How can I help you today?"
    llm_replies = [m["content"] for m in history[2::2]]
    assert len(llm_replies) == 2
    assert all(isinstance(r, str) and r.strip() for r in llm_replies), llm_replies
    # The server logged two chat requests and no error.
    assert server.log().count('POST /v1/chat/completions HTTP/1.1" 200') == 2
    assert "Traceback" not in server.log()


def test_default_max_tokens_comes_from_the_override(server: Server):
    # AutoGen sends no max_tokens: the server's default (--override-generation-config)
    # bounds the reply.
    body = {
        "model": httpx.get(f"{server.v1}/models").json()["data"][0]["id"],
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "stream": False,
        "ignore_eos": True,
    }
    r = httpx.post(f"{server.v1}/chat/completions", json=body, timeout=120).json()
    assert r["usage"]["completion_tokens"] == MAX_NEW_TOKENS
    assert r["choices"][0]["finish_reason"] == "length"
