"""benches/plot.py draws the core chart from the core benchmarks' JSON layout (the
serving chart is drawn in test_bench_serving from a real sweep)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parents[1] / "benches"
sys.path.insert(0, str(BENCHES))

import plot  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_core_chart_from_scheduler_and_detokenizer_json(tmp_path):
    sched = tmp_path / "core_scheduler.json"
    sched.write_text(
        json.dumps(
            {
                "machine": {"cpus": 2, "load_avg_1m": 1.5},
                "decode": {
                    str(n): {"rsllm_us_per_step": 0.1 * n, "python_us_per_step": 2.0 * n}
                    for n in (64, 256, 1024, 4096)
                },
            }
        )
    )
    detok = tmp_path / "bench_detokenizer.json"
    detok.write_text(
        json.dumps(
            {
                "load_average": [1.0, 1.2],
                "results": [
                    {"requests": n, "rsllm_tokens_per_s": 5e6, "decode_stream_tokens_per_s": 1e6}
                    for n in (64, 1024)
                ],
            }
        )
    )
    both = plot.plot_core(sched, detok, tmp_path / "core.png")
    assert both.read_bytes()[:8] == PNG
    one = plot.plot_core(sched, tmp_path / "missing.json", tmp_path / "sched.png")
    assert one.read_bytes()[:8] == PNG
    assert one.stat().st_size < both.stat().st_size  # one panel, not two
    with pytest.raises(FileNotFoundError):
        plot.plot_core(None, tmp_path / "missing.json", tmp_path / "none.png")
