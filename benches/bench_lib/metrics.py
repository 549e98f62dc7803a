"""Serving metrics with vLLM's `bench serve` definitions, from per-request timestamps.

Per request (all times relative to the moment the request was sent):
- TTFT: the arrival of the first chunk that carries generated text;
- ITL: the gaps between successive chunks with text after the first (a chunk carrying
  several tokens is one gap, as in vLLM);
- E2E latency: the arrival of the last chunk;
- TPOT: (E2E - TTFT) / (output tokens - 1), for requests with more than one token.
Throughputs divide by the benchmark's wall time; failed requests count as 0 tokens and
are left out of every latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """What one request saw. `chunk_times` are the arrival times (seconds after the
    request was sent) of the streamed chunks that carried text."""

    prompt_len: int
    success: bool = False
    chunk_times: list[float] = field(default_factory=list)
    output_tokens: int | None = None  # from the server's usage, when it reports it
    generated_text: str = ""
    error: str = ""
    start_time: float = 0.0  # when it was sent, seconds after the benchmark began

    @property
    def ttft(self) -> float:
        return self.chunk_times[0]

    @property
    def latency(self) -> float:
        return self.chunk_times[-1]

    @property
    def itl(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]

    @property
    def num_output_tokens(self) -> int:
        """The server's count when given, else one token per text chunk."""
        return self.output_tokens if self.output_tokens is not None else len(self.chunk_times)


def summarize(values_s: Sequence[float]) -> dict[str, float]:
    """mean, median, p90, p99 and std of seconds, in milliseconds (0 when empty, as vLLM)."""
    arr = np.asarray(values_s if len(values_s) else [0.0], dtype=np.float64) * 1000.0
    out = {"mean_ms": float(arr.mean()), "std_ms": float(arr.std())}
    for p in PERCENTILES:
        key = "median_ms" if p == 50 else f"p{p}_ms"
        out[key] = float(np.percentile(arr, p))
    return out


def calculate_metrics(records: Sequence[RequestRecord], duration_s: float) -> dict[str, Any]:
    """The benchmark's numbers from its requests' records and wall time."""
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    ttfts, tpots, itls, e2els = [], [], [], []
    completed = total_input = total_output = 0
    for r in records:
        if not r.success or not r.chunk_times:
            continue
        completed += 1
        n = r.num_output_tokens
        total_input += r.prompt_len
        total_output += n
        ttfts.append(r.ttft)
        e2els.append(r.latency)
        itls.extend(r.itl)
        if n > 1:
            tpots.append((r.latency - r.ttft) / (n - 1))
    failed = len(records) - completed
    return {
        "completed": completed,
        "failed": failed,
        "duration_s": duration_s,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": completed / duration_s,
        "output_throughput": total_output / duration_s,
        "total_token_throughput": (total_input + total_output) / duration_s,
        "max_concurrent_requests": max_concurrency(records),
        "ttft": summarize(ttfts),
        "tpot": summarize(tpots),
        "itl": summarize(itls),
        "e2el": summarize(e2els),
        "errors": sorted({r.error for r in records if r.error})[:5],
    }


def max_concurrency(records: Sequence[RequestRecord]) -> int:
    """The most requests in flight at once (successful ones, from their start and end)."""
    events = []
    for r in records:
        if r.success and r.chunk_times:
            events.append((r.start_time, 1))
            events.append((r.start_time + r.latency, -1))
    # Ends sort before starts at the same instant: a request that ends as another
    # begins does not overlap it.
    level = peak = 0
    for _, delta in sorted(events):
        level += delta
        peak = max(peak, level)
    return peak
