"""The app in-process over the real engine: no input makes it answer 500, and a dead
engine turns into 503s (with /health saying so) instead of hangs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from rsllm.engine.arg_utils import EngineArgs
from rsllm.engine.async_llm import AsyncLLM
from rsllm.entrypoints.openai.api_server import build_app
from rsllm.entrypoints.openai.serving_engine import ServerConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> Iterator[AsyncLLM]:
    engine = AsyncLLM.from_engine_args(EngineArgs(max_model_len=256))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def client(engine: AsyncLLM) -> Iterator[TestClient]:
    app = build_app(engine, ServerConfig([engine.served_model_name]), log_stats=False)
    # raise_server_exceptions: a bug that would be a 500 fails the test with its traceback.
    with TestClient(app, raise_server_exceptions=True) as client:
        yield client


MESSAGES = [{"role": "user", "content": "Hi"}]
ODD_CHAT_BODIES: list[Any] = [
    None,
    [],
    "text",
    {"messages": None},
    {"messages": [{}]},
    {"messages": [{"role": None, "content": "x"}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
    {"messages": MESSAGES, "n": 10**9},
    {"messages": MESSAGES, "n": -1},
    {"messages": MESSAGES, "max_tokens": -5},
    {"messages": MESSAGES, "max_tokens": 10**12},
    {"messages": MESSAGES, "max_completion_tokens": 0},
    b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": Infinity}',
    b'{"messages": [{"role": "user", "content": "Hi"}], "top_p": NaN}',
    b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}',
    b"\xff\xfe",
    {"messages": MESSAGES, "top_k": -7},
    {"messages": MESSAGES, "stop": [""]},
    {"messages": MESSAGES, "stop": 5},
    {"messages": MESSAGES, "stop_token_ids": [-1]},
    {"messages": MESSAGES, "logit_bias": {"99999999": 5}},
    {"messages": MESSAGES, "logit_bias": {"5": 1000}},
    {"messages": MESSAGES, "top_logprobs": 2},
    {"messages": MESSAGES, "seed": "x"},
    {"messages": MESSAGES, "priority": 3},
    {"messages": MESSAGES, "stream": "yes please"},
    {"messages": MESSAGES, "stream_options": 1},
    {"messages": MESSAGES, "chat_template": "{% for %}"},
    {"messages": MESSAGES, "chat_template": "{{ raise_exception('nope') }}"},
    {"messages": MESSAGES, "chat_template": "{{ undefined_thing.attr }}"},
    {"messages": MESSAGES, "chat_template_kwargs": "x"},
    {"messages": MESSAGES, "add_generation_prompt": True, "continue_final_message": True},
    {"messages": MESSAGES, "tools": [{"type": "function"}]},
    {"messages": MESSAGES, "tool_choice": "required"},
    {"messages": MESSAGES, "response_format": {"type": "bogus"}},
]
ODD_COMPLETION_BODIES: list[Any] = [
    {"prompt": ""},
    {"prompt": []},
    {"prompt": [[]]},
    {"prompt": [-1, 5]},
    {"prompt": [10**12]},
    {"prompt": [["a"]]},
    {"prompt": None},
    {"prompt": "x", "suffix": "y"},
    {"prompt": "x", "best_of": 3},
    {"prompt": "x", "logprobs": 10**6},
    {"prompt": "x", "echo": True, "logprobs": -1},
]


@pytest.mark.parametrize("body", ODD_CHAT_BODIES)
def test_odd_chat_bodies_are_client_errors(client: TestClient, body):
    if isinstance(body, bytes):
        r = client.post("/v1/chat/completions", content=body)
    else:
        r = client.post("/v1/chat/completions", json=body)
    assert 400 <= r.status_code < 500, (body, r.text)
    assert r.json()["error"]["message"]


@pytest.mark.parametrize("body", ODD_COMPLETION_BODIES)
def test_odd_completion_bodies_are_client_errors(client: TestClient, body):
    r = client.post("/v1/completions", json=body)
    assert 400 <= r.status_code < 500, (body, r.text)


def test_template_errors_carry_the_templates_message(client: TestClient):
    body = {"messages": MESSAGES, "chat_template": "{{ raise_exception('roles must alternate') }}"}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "roles must alternate"


def test_still_serving_after_all_that(client: TestClient):
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3})
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] == 3 or r.json()["choices"][0]["finish_reason"]


def test_a_dead_engine_answers_503(client: TestClient, engine: AsyncLLM):
    # Inject a fault into the engine loop's next step, as a broken kernel would.
    def broken_step() -> None:
        raise RuntimeError("injected fault")

    engine.engine.step = broken_step  # type: ignore[method-assign,assignment]
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 4})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "ServiceUnavailableError"
    assert engine.errored
    assert client.get("/health").status_code == 503
    for stream in (False, True):
        body = {"messages": MESSAGES, "max_tokens": 4, "stream": stream}
        assert client.post("/v1/chat/completions", json=body).status_code == 503
    assert client.get("/metrics").status_code == 200
