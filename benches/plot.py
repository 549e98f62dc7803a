"""PNG charts from the benchmarks' JSON (benches/results/):

- serving sweep: output throughput against concurrency, the throughput-latency curve,
  and latency percentiles against request rate (from serving.py --sweep);
- core: the scheduler's cost per request-step against the number of running requests and
  the detokenizer's tokens/s against concurrent requests, each beside its pure-Python
  counterpart (from benches/core/bench_scheduler.py and bench_detokenizer.py).

    .venv/bin/python benches/plot.py [--serving F.json] [--core F.json]
        [--detokenizer F.json] [--out-dir D]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display here
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benches" / "results"
OUT_DIR = ROOT / "docs" / "benchmarks"


def _caption(report: dict[str, Any]) -> str:
    m = report.get("machine", {})
    loads = [p["load_average_start"] for p in report["results"].get("points", [])]
    loads = loads or [m.get("load_average_start", m.get("load_average", [0.0]))[0]]
    return (
        f"{m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} cores, 1-min load average "
        f"{min(loads):.1f}-{max(loads):.1f} (shared machine); "
        f"rsllm {report.get('versions', {}).get('rsllm', '?')}, {report.get('date', '')}"
    )


def plot_serving_sweep(path: Path, out: Path | None = None) -> Path:
    report = json.loads(Path(path).read_text())
    points = report["results"]["points"]
    by_conc = [p for p in points if p["request_rate"] is None and p["max_concurrency"]]
    by_rate = [p for p in points if p["request_rate"] is not None]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))

    ax = axes[0]
    conc = [p["max_concurrency"] for p in by_conc]
    ax.plot(conc, [p["output_throughput"] for p in by_conc], "o-")
    for p in by_conc:
        label = f"{p['request_throughput']:.2f} req/s"
        ax.annotate(
            label,
            (p["max_concurrency"], p["output_throughput"]),
            fontsize=8,
            textcoords="offset points",
            xytext=(4, -12),
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(conc, [str(c) for c in conc])
    ax.set_xlabel("max concurrency (requests)")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Throughput vs concurrency")

    ax = axes[1]
    tpot = [p["tpot"]["median_ms"] for p in by_conc]
    thr = [p["output_throughput"] for p in by_conc]
    ax.plot(tpot, thr, "o-")
    for c, x, y in zip(conc, tpot, thr, strict=True):
        ax.annotate(f"c={c}", (x, y), textcoords="offset points", xytext=(5, -10))
    ax.set_xlabel("median time per output token (ms)")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Throughput-latency (concurrency sweep)")

    ax = axes[2]
    if by_rate:
        rates = [p["request_rate"] for p in by_rate]
        for key, label, style in (
            ("ttft", "TTFT", "-"),
            ("e2el", "E2E", "--"),
        ):
            for stat, marker in (("median_ms", "o"), ("p90_ms", "^"), ("p99_ms", "s")):
                name = stat.split("_")[0]
                ax.plot(
                    rates,
                    [p[key][stat] / 1000 for p in by_rate],
                    style,
                    marker=marker,
                    label=f"{label} {name}",
                )
        ax.set_xlabel("request rate (req/s, Poisson)")
        ax.set_ylabel("latency (s)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_title("Latency percentiles vs request rate")

    params = report["parameters"]
    fig.suptitle(
        f"rsllm serving, {params.get('model')}: {params.get('dataset')} prompts, "
        f"{params.get('output_len')} output tokens\n{_caption(report)}",
        fontsize=10,
    )
    fig.tight_layout()
    out = out or OUT_DIR / "serving_sweep.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_core(scheduler: Path | None, detokenizer: Path | None, out: Path | None = None) -> Path:
    """Core cost against batch size: the scheduler's ns per request-step (flat is the
    goal) and the detokenizer's tokens/s, each beside its pure-Python counterpart."""
    panels = [p for p in (scheduler, detokenizer) if p is not None and p.exists()]
    if not panels:
        raise FileNotFoundError("no core benchmark results to draw")
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    notes = []
    for ax, path in zip(axes[0], panels, strict=True):
        report = json.loads(path.read_text())
        if path == scheduler:
            decode = report["decode"]
            sizes = sorted(int(n) for n in decode)
            for impl, key in (
                ("rsllm (Rust core)", "rsllm_us_per_step"),
                ("pure Python", "python_us_per_step"),
            ):
                ax.plot(sizes, [decode[str(n)][key] * 1000 / n for n in sizes], "o-", label=impl)
            ax.set_ylabel("ns per request-step (schedule + update)")
            ax.set_xlabel("running requests")
            ax.set_title("Scheduler: cost per request-step")
            ax.set_yscale("log")
            m = report.get("machine", {})
            notes.append(f"scheduler: load {m.get('load_avg_1m', 0):.1f}")
        else:
            rows = sorted(report["results"], key=lambda r: r["requests"])
            sizes = [r["requests"] for r in rows]
            for impl, key in (
                ("rsllm (one batch call)", "rsllm_tokens_per_s"),
                ("tokenizers DecodeStream", "decode_stream_tokens_per_s"),
            ):
                ax.plot(sizes, [r[key] / 1e6 for r in rows], "o-", label=impl)
            ax.set_ylabel("million tokens/s (stop string on every request)")
            ax.set_xlabel("concurrent requests")
            ax.set_title("Detokenizer: throughput")
            notes.append(f"detokenizer: load {report.get('load_average', [0])[0]:.1f}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.legend()
    fig.text(0.01, 0.01, "; ".join(notes) + f"; {cpu_note()}", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out = out or OUT_DIR / "core.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def cpu_note() -> str:
    from bench_lib.report import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPUs"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--serving", type=Path, default=RESULTS / "serving_sweep.json")
    p.add_argument("--core", type=Path, default=RESULTS / "core_scheduler.json")
    p.add_argument("--detokenizer", type=Path, default=RESULTS / "bench_detokenizer.json")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = p.parse_args()
    drawn = []
    if args.serving.exists():
        drawn.append(plot_serving_sweep(args.serving, args.out_dir / "serving_sweep.png"))
    if args.core.exists() or args.detokenizer.exists():
        drawn.append(plot_core(args.core, args.detokenizer, args.out_dir / "core.png"))
    if not drawn:
        raise SystemExit(f"no results to draw: run the benchmarks first ({RESULTS})")
    for path in drawn:
        print(f"drew {path}")


if __name__ == "__main__":
    main()
