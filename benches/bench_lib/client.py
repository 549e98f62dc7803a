"""An async load generator for any OpenAI-compatible server: streaming requests to
/v1/completions or /v1/chat/completions, sent on a Poisson (gamma) schedule under a
concurrency cap, each timed chunk by chunk into a `RequestRecord`."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import numpy as np

from bench_lib.datasets import BenchRequest
from bench_lib.metrics import RequestRecord

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def arrival_gaps(n: int, request_rate: float, burstiness: float, seed: int) -> list[float]:
    """Seconds to wait after each request before sending the next (vLLM's schedule):
    gamma-distributed with shape `burstiness` and mean 1/rate; burstiness 1 is a
    Poisson process, lower is burstier, higher more regular. An infinite rate sends
    everything at once."""
    if burstiness <= 0:
        raise ValueError(f"burstiness must be positive, got {burstiness}")
    if math.isinf(request_rate):
        return [0.0] * n
    if request_rate <= 0:
        raise ValueError(f"request rate must be positive, got {request_rate}")
    rng = np.random.default_rng(seed)
    return rng.gamma(burstiness, 1.0 / (request_rate * burstiness), size=n).tolist()


def payload(req: BenchRequest, endpoint: str, model: str) -> dict[str, Any]:
    """The request body: greedy, exactly `output_len` tokens (`ignore_eos` is vLLM's
    extension, also read by rsllm; other servers may ignore it), usage in the stream."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": req.output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    if endpoint == "chat":
        if req.messages is None:
            raise ValueError("the chat endpoint needs a dataset with messages")
        body["messages"] = req.messages
    else:
        body["prompt"] = req.prompt_token_ids
    return body


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any] | None]:
    """The JSON events of a server-sent-event stream; None for `[DONE]`."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            yield None
            return
        yield json.loads(data)


def chunk_text(event: dict[str, Any], endpoint: str) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    if endpoint == "chat":
        return (choices[0].get("delta") or {}).get("content") or ""
    return choices[0].get("text") or ""


async def send_one(
    client: httpx.AsyncClient,
    url: str,
    req: BenchRequest,
    endpoint: str,
    model: str,
    bench_start: float,
) -> RequestRecord:
    record = RequestRecord(prompt_len=req.prompt_len)
    start = time.perf_counter()
    record.start_time = start - bench_start
    text: list[str] = []
    try:
        async with client.stream("POST", url, json=payload(req, endpoint, model)) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                record.error = f"HTTP {response.status_code}: {body[:200]}"
                return record
            done = False
            async for event in sse_events(response):
                now = time.perf_counter()
                if event is None:
                    done = True
                    break
                if "error" in event:
                    record.error = f"stream error: {str(event['error'])[:200]}"
                    return record
                piece = chunk_text(event, endpoint)
                if piece:
                    record.chunk_times.append(now - start)
                    text.append(piece)
                usage = event.get("usage")
                if usage:
                    record.output_tokens = usage.get("completion_tokens")
                    record.prompt_len = usage.get("prompt_tokens") or record.prompt_len
        record.generated_text = "".join(text)
        if not done:
            record.error = "stream ended without [DONE]"
        elif not record.chunk_times:
            record.error = "no chunk with text: TTFT undefined"
        else:
            record.success = True
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        record.error = f"{type(e).__name__}: {e}"
    return record


async def run_load(
    base_url: str,
    requests: Sequence[BenchRequest],
    *,
    endpoint: str = "completions",
    model: str,
    request_rate: float = math.inf,
    burstiness: float = 1.0,
    max_concurrency: int | None = None,
    seed: int = 0,
    timeout_s: float = 600.0,
) -> tuple[list[RequestRecord], float]:
    """Send every request on the schedule; return their records (in request order) and
    the wall time from the first send to the last answer."""
    url = base_url.rstrip("/") + ENDPOINTS[endpoint]
    gaps = arrival_gaps(len(requests), request_rate, burstiness, seed)
    cap = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    limits = httpx.Limits(max_connections=max_concurrency or len(requests) or 1)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        bench_start = time.perf_counter()

        async def limited(req: BenchRequest) -> RequestRecord:
            if cap is None:
                return await send_one(client, url, req, endpoint, model, bench_start)
            async with cap:
                return await send_one(client, url, req, endpoint, model, bench_start)

        tasks = []
        for req, gap in zip(requests, gaps, strict=True):
            tasks.append(asyncio.create_task(limited(req)))
            if gap > 0:
                await asyncio.sleep(gap)
        records = list(await asyncio.gather(*tasks))
        duration = time.perf_counter() - bench_start
    return records, duration


async def served_model(base_url: str) -> str:
    """The first model id of /v1/models."""
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(base_url.rstrip("/") + "/v1/models")
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
