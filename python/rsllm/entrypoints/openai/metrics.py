"""Prometheus metrics for `/metrics`, and the periodic stats line in the log.

Request-level figures (finish reasons, token counts, latencies) are measured here, as
the server sees each request; engine-level figures (running and waiting requests, KV
cache usage, prefix-cache hits) are read from `AsyncLLM.get_stats()` at scrape time.
Names follow vLLM's (`vllm:` becomes `rsllm:`) so that existing dashboards map over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger("rsllm.serve")

# The `*_created` timestamp series only double the output (vLLM turns them off too).
disable_created_metrics()

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)  # fmt: skip


class _StatsSource(Protocol):
    def get_stats(self) -> dict[str, Any]: ...


# Engine stats exported under fixed names: stats key -> (metric, help, kind).
_ENGINE_STATS = {
    "num_running": ("rsllm:num_requests_running", "Requests in the running batch.", "gauge"),
    "num_waiting": ("rsllm:num_requests_waiting", "Requests waiting to be scheduled.", "gauge"),
    "kv_cache_usage": (
        "rsllm:kv_cache_usage_perc",
        "Fraction of KV-cache blocks in use (1 = full).",
        "gauge",
    ),
    "prefix_cache_queries": (
        "rsllm:prefix_cache_queries",
        "Prompt tokens looked up in the prefix cache.",
        "counter",
    ),
    "prefix_cache_hits": (
        "rsllm:prefix_cache_hits",
        "Prompt tokens found in the prefix cache.",
        "counter",
    ),
}


class _EngineCollector(Collector):
    def __init__(self, engine: _StatsSource) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        try:
            stats = dict(self._engine.get_stats())
        except Exception:  # a dead engine must not break the scrape of the server's metrics
            logger.debug("get_stats failed", exc_info=True)
            return
        for key, (name, doc, kind) in _ENGINE_STATS.items():
            if key in stats:
                family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                yield family(name, doc, value=float(stats[key]))
        queries, hits = stats.get("prefix_cache_queries"), stats.get("prefix_cache_hits")
        if queries is not None and hits is not None:
            rate = float(hits) / float(queries) if queries else 0.0
            yield GaugeMetricFamily(
                "rsllm:prefix_cache_hit_rate", "Prefix-cache hits / queries since start.", rate
            )
        # Anything else the engine reports (block counts, preemptions...) as a gauge.
        for key, value in stats.items():
            if key not in _ENGINE_STATS and isinstance(value, (int, float)):
                yield GaugeMetricFamily(f"rsllm:engine_{key}", f"Engine stat {key}.", float(value))


class ServerMetrics:
    """The server's registry (one per app, so that tests may build several apps)."""

    def __init__(self, engine: _StatsSource) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_success = Counter(
            "rsllm:request_success",
            "Finished requests (each of the n choices) by finish reason.",
            ["finished_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter("rsllm:prompt_tokens", "Prompt tokens.", registry=r)
        self.generation_tokens = Counter("rsllm:generation_tokens", "Generated tokens.", registry=r)
        self.time_to_first_token = Histogram(
            "rsllm:time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "rsllm:inter_token_latency_seconds",
            "Time between two generated tokens of a request.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e_latency = Histogram(
            "rsllm:e2e_request_latency_seconds",
            "Time from arrival to the last token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_EngineCollector(engine))
        # Plain totals for the stats line (prometheus counters are write-only).
        self.total_prompt_tokens = 0
        self.total_generation_tokens = 0

    def request_timer(self, num_prompt_tokens: int) -> RequestTimer:
        self.prompt_tokens.inc(num_prompt_tokens)
        self.total_prompt_tokens += num_prompt_tokens
        return RequestTimer(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Latency of one request, fed with each delta as it arrives."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._m = metrics
        self._arrival = time.perf_counter()
        self._last: float | None = None

    def on_tokens(self, num_new_tokens: int) -> None:
        if num_new_tokens <= 0:
            return
        now = time.perf_counter()
        self._m.generation_tokens.inc(num_new_tokens)
        self._m.total_generation_tokens += num_new_tokens
        if self._last is None:
            self._m.time_to_first_token.observe(now - self._arrival)
            num_new_tokens -= 1  # the rest of this delta came in the same step(s)
            self._last = now
        if num_new_tokens > 0:
            # Several tokens in one delta (the consumer was behind): spread the gap.
            gap = (now - self._last) / num_new_tokens
            for _ in range(num_new_tokens):
                self._m.inter_token_latency.observe(gap)
            self._last = now

    def on_finish(self, finish_reason: str) -> None:
        self._m.request_success.labels(finished_reason=finish_reason).inc()

    def on_done(self) -> None:
        self._m.e2e_latency.observe(time.perf_counter() - self._arrival)


async def log_stats_periodically(
    engine: _StatsSource, metrics: ServerMetrics, interval_s: float = 10.0
) -> None:
    """vLLM's stats line: throughput and engine state, while there is something to say."""
    last_prompt = last_gen = 0
    while True:
        await asyncio.sleep(interval_s)
        prompt, gen = metrics.total_prompt_tokens, metrics.total_generation_tokens
        try:
            stats = engine.get_stats()
        except Exception:
            continue
        running, waiting = stats.get("num_running", 0), stats.get("num_waiting", 0)
        if prompt == last_prompt and gen == last_gen and not running and not waiting:
            continue
        queries = stats.get("prefix_cache_queries") or 0
        hit_rate = (stats.get("prefix_cache_hits") or 0) / queries if queries else 0.0
        logger.info(
            "prompt throughput: %.1f tokens/s, generation throughput: %.1f tokens/s, "
            "running: %d reqs, waiting: %d reqs, KV cache usage: %.1f%%, "
            "prefix cache hit rate: %.1f%%",
            (prompt - last_prompt) / interval_s,
            (gen - last_gen) / interval_s,
            running,
            waiting,
            100.0 * float(stats.get("kv_cache_usage", 0.0)),
            100.0 * hit_rate,
        )
        last_prompt, last_gen = prompt, gen
