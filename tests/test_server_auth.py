"""A server started with --api-key, several --served-model-name and a small context:
401 only on /v1/*, CORS preflights, model aliases, max_tokens defaulting to the rest
of the context."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from _server import Server, running_server

KEY = "sk-rsllm-test"
MAX_MODEL_LEN = 96
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server(
        "--api-key", KEY,
        "--served-model-name", "main-name", "alias",
        "--max-model-len", str(MAX_MODEL_LEN),
        "--allowed-origins", '["http://example.test"]',
    ) as s:  # fmt: skip
        yield s


def test_v1_needs_the_bearer_key(server: Server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.get(f"{server.v1}/models", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "AuthenticationError"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.v1, api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=server.v1, api_key=KEY, max_retries=0)
    assert [m.id for m in good.models.list().data] == ["main-name", "alias"]


def test_other_paths_stay_open(server: Server):
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    assert httpx.get(f"{server.base_url}/metrics").status_code == 200
    assert httpx.get(f"{server.base_url}/version").status_code == 200
    assert httpx.post(f"{server.base_url}/tokenize", json={"prompt": "hi"}).status_code == 200


def test_cors_preflight_and_headers(server: Server):
    origin = {"Origin": "http://example.test"}
    preflight = httpx.options(
        f"{server.v1}/chat/completions",
        headers={**origin, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://example.test"
    r = httpx.get(f"{server.v1}/models", headers={**origin, "Authorization": f"Bearer {KEY}"})
    assert r.headers["access-control-allow-origin"] == "http://example.test"
    other = httpx.get(f"{server.base_url}/health", headers={"Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in other.headers


def test_aliases_and_default_max_tokens_fill_the_context(server: Server):
    client = openai.OpenAI(base_url=server.v1, api_key=KEY, max_retries=0)
    r = client.completions.create(
        model="alias", prompt="Once upon a time", extra_body={"ignore_eos": True}
    )
    assert r.model == "main-name"
    assert r.usage is not None
    # No max_tokens: everything that fits in the context, then finish_reason "length".
    assert r.usage.total_tokens == MAX_MODEL_LEN
    assert r.choices[0].finish_reason == "length"
