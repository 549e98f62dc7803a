"""The serving benchmark's harness: vLLM's metric definitions on known timestamps, the
arrival schedule, failure counting, and a tiny live run against the real server (a
tiny random Llama) that writes its JSON and chart."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHES = Path(__file__).resolve().parents[1] / "benches"
sys.path.insert(0, str(BENCHES))

from bench_lib.client import arrival_gaps, run_load, served_model  # noqa: E402
from bench_lib.datasets import random_requests  # noqa: E402
from bench_lib.metrics import RequestRecord, calculate_metrics, summarize  # noqa: E402


def test_metrics_from_known_timestamps():
    a = RequestRecord(prompt_len=10, success=True, chunk_times=[0.1, 0.2, 0.4], start_time=0.0)
    a.output_tokens = 3
    # Two chunks of text for 5 tokens (a chunk may carry several): TPOT uses the tokens,
    # ITL the chunk gaps.
    b = RequestRecord(prompt_len=20, success=True, chunk_times=[0.3, 1.1], start_time=0.2)
    b.output_tokens = 5
    c = RequestRecord(prompt_len=7, error="HTTP 400: too long", start_time=0.5)
    m = calculate_metrics([a, b, c], duration_s=2.0)

    assert (m["completed"], m["failed"]) == (2, 1)
    assert m["total_input_tokens"] == 30  # the failed request's prompt does not count
    assert m["total_output_tokens"] == 8
    assert m["request_throughput"] == pytest.approx(1.0)
    assert m["output_throughput"] == pytest.approx(4.0)
    assert m["total_token_throughput"] == pytest.approx(19.0)
    assert m["ttft"]["mean_ms"] == pytest.approx(200.0)
    assert m["ttft"]["median_ms"] == pytest.approx(200.0)
    # TPOT: a (0.4 - 0.1) / 2 = 150 ms, b (1.1 - 0.3) / 4 = 200 ms.
    assert m["tpot"]["mean_ms"] == pytest.approx(175.0)
    assert m["tpot"]["p99_ms"] == pytest.approx(150 + 0.99 * 50)
    # ITL: 100, 200 (a) and 800 ms (b).
    assert m["itl"]["median_ms"] == pytest.approx(200.0)
    assert m["itl"]["p90_ms"] == pytest.approx(200 + 0.8 * 600)
    assert m["e2el"]["mean_ms"] == pytest.approx(750.0)
    # a runs 0.0-0.4, b 0.2-1.3: two at once.
    assert m["max_concurrent_requests"] == 2
    assert m["errors"] == ["HTTP 400: too long"]


def test_tokens_default_to_text_chunks_without_usage():
    r = RequestRecord(prompt_len=1, success=True, chunk_times=[0.5, 0.75, 1.0, 1.5])
    m = calculate_metrics([r], duration_s=1.5)
    assert m["total_output_tokens"] == 4
    assert m["tpot"]["mean_ms"] == pytest.approx(1000 / 3)


def test_no_successes_gives_zeros_not_nan():
    m = calculate_metrics([RequestRecord(prompt_len=3, error="refused")], duration_s=1.0)
    assert (m["completed"], m["failed"], m["output_throughput"]) == (0, 1, 0.0)
    assert m["ttft"] == summarize([])
    assert not any(math.isnan(v) for v in m["ttft"].values())
    with pytest.raises(ValueError, match="duration"):
        calculate_metrics([], duration_s=0.0)


def test_arrival_schedule():
    assert arrival_gaps(5, math.inf, 1.0, seed=0) == [0.0] * 5
    poisson = np.array(arrival_gaps(20000, 4.0, 1.0, seed=1))
    assert poisson.mean() == pytest.approx(0.25, rel=0.03)
    assert poisson.std() == pytest.approx(0.25, rel=0.05)  # exponential: std = mean
    bursty = np.array(arrival_gaps(20000, 4.0, 0.25, seed=1))
    assert bursty.mean() == pytest.approx(0.25, rel=0.06)
    assert bursty.std() > 1.8 * poisson.std()  # gamma shape 1/4: std = 2 x mean
    assert arrival_gaps(10, 2.0, 1.0, seed=3) == arrival_gaps(10, 2.0, 1.0, seed=3)
    with pytest.raises(ValueError, match="burstiness"):
        arrival_gaps(3, 1.0, 0.0, seed=0)


def test_unreachable_server_counts_every_request_as_failed():
    from bench_lib.launch import free_port

    requests = random_requests(3, (4, 8), 4, vocab_size=1000, seed=0)
    records, duration = asyncio.run(
        run_load(f"http://127.0.0.1:{free_port()}", requests, model="m", timeout_s=5)
    )
    m = calculate_metrics(records, duration)
    assert (m["completed"], m["failed"]) == (0, 3)
    assert all("ConnectError" in r.error for r in records)


@pytest.mark.slow
def test_sweep_against_launched_server_writes_json_and_chart(tiny_llama_dir, tmp_path):
    """A run against the real server in which one request is too long for the model and
    must be reported as failed, not dropped; then a small sweep (two concurrencies, one
    rate) against the same server."""
    import plot
    import serving
    from bench_lib.launch import launched_server

    with launched_server(["--model", str(tiny_llama_dir), "--max-model-len", "64"]) as url:
        model = asyncio.run(served_model(url))
        ok = random_requests(4, (5, 20), 4, vocab_size=49152, seed=0)
        too_long = random_requests(1, (80, 80), 4, vocab_size=49152, seed=1)
        records, duration = asyncio.run(
            run_load(url, ok + too_long, model=model, max_concurrency=2)
        )
        out, chart = tmp_path / "sweep.json", tmp_path / "sweep.png"
        argv = ["--base-url", url, "--sweep", "--endpoint", "completions", "--dataset", "random"]
        argv += ["--input-len-range", "5", "20", "--output-len", "4", "--sweep-prompts", "2", "2"]
        argv += ["--sweep-concurrency", "1", "2", "--sweep-rates", "50"]
        serving.main([*argv, "--out", str(out), "--plot", str(chart)])
    m = calculate_metrics(records, duration)
    assert (m["completed"], m["failed"]) == (4, 1)
    assert records[-1].error.startswith("HTTP 400")
    assert m["total_output_tokens"] == 16  # EOS ignored: exactly max_tokens each
    assert all(len(r.chunk_times) >= 1 and r.ttft <= r.latency for r in records[:4])
    assert m["max_concurrent_requests"] <= 2

    report = json.loads(out.read_text())
    assert report["machine"]["cpu_count"] >= 1 and len(report["machine"]["load_average"]) == 3
    assert report["versions"]["torch"] and report["versions"]["transformers"]
    assert report["parameters"]["output_len"] == 4
    assert report["parameters"]["model"] == model
    points = report["results"]["points"]
    assert [(p["max_concurrency"], p["request_rate"]) for p in points] == [
        (1, None),
        (2, None),
        (None, 50.0),
    ]
    assert all(p["completed"] == 2 and p["failed"] == 0 for p in points)
    assert all(p["total_output_tokens"] == 8 for p in points)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.plot_serving_sweep(out, tmp_path / "again.png").stat().st_size > 1000
