"""Online serving benchmark: an async streaming load generator for any OpenAI-compatible
server (rsllm, llama.cpp's server, vLLM), with vLLM `bench serve`'s metrics: TTFT, TPOT,
ITL and end-to-end latency (mean, median, p90, p99), request and token throughput, and
failed requests.

    # against a running server (any OpenAI-compatible one)
    .venv/bin/python benches/serving.py --base-url http://127.0.0.1:8000 \\
        --num-prompts 64 --request-rate 4 --max-concurrency 16
    # start rsllm on a free port, measure, stop it
    .venv/bin/python benches/serving.py --launch --num-prompts 32 --max-concurrency 8
    # the sweep: concurrency 1, 4, 16, 64, then request rates, on one server; draws the
    # throughput-latency chart (benches/plot.py)
    .venv/bin/python benches/serving.py --launch --sweep

Server flags after `--` go to `python -m rsllm.serve` with --launch. Writes JSON to
benches/results/serving.json (serving_sweep.json with --sweep).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_lib.client import run_load, served_model
from bench_lib.datasets import BenchRequest, conversation_requests, random_requests
from bench_lib.launch import launched_server
from bench_lib.metrics import calculate_metrics
from bench_lib.report import write_result

SWEEP_CONCURRENCY = (1, 4, 16, 64)
SWEEP_RATES = (0.5, 1.0, 2.0, 4.0)
DEFAULT_VOCAB = 49152  # the default model's; only bounds random ids


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--base-url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--launch", action="store_true", help="start rsllm on a free port")
    p.add_argument("--model", help="model name in requests (default: the first of /v1/models)")
    p.add_argument("--endpoint", choices=("completions", "chat"), default="chat")
    p.add_argument("--dataset", choices=("random", "conversations"), default="conversations")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len-range", type=int, nargs=2, default=(50, 500))
    p.add_argument("--output-len", type=int, default=64, help="tokens per reply (EOS ignored)")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB, help="random token ids")
    p.add_argument("--request-rate", type=float, default=math.inf, help="req/s (inf: all at once)")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape; 1 = Poisson")
    p.add_argument("--max-concurrency", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--sweep", action="store_true", help="concurrency and request-rate sweep")
    p.add_argument("--sweep-concurrency", type=int, nargs="*", default=list(SWEEP_CONCURRENCY))
    p.add_argument("--sweep-rates", type=float, nargs="*", default=list(SWEEP_RATES))
    p.add_argument(
        "--sweep-prompts",
        type=int,
        nargs=2,
        default=(16, 64),
        metavar=("MIN", "MAX"),
        help="requests per sweep point: 2 x concurrency, clamped to [MIN, MAX]",
    )
    p.add_argument(
        "--plot", type=Path, help="sweep chart (default docs/benchmarks/serving_sweep.png)"
    )
    p.add_argument("--out", type=Path, help="JSON path")
    p.add_argument("server_args", nargs="*", help="after --: flags for rsllm.serve (--launch)")
    args = p.parse_args(argv)
    if args.endpoint == "chat" and args.dataset == "random":
        p.error("random token prompts go to --endpoint completions")
    return args


def build_requests(args: argparse.Namespace, num: int, start: int = 0) -> list[BenchRequest]:
    """`num` prompts; a sweep gives each point its own (`start`), so that no point finds
    the previous points' prompts in the server's prefix cache."""
    if args.dataset == "random":
        lengths = tuple(args.input_len_range)
        return random_requests(num, lengths, args.output_len, args.vocab_size, args.seed + start)
    # The server renders and counts the prompt (its usage reports prompt_tokens).
    return conversation_requests(num, lambda _messages: [], args.output_len, start=start)


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[str]:
    if args.launch:
        with launched_server(args.server_args) as url:
            yield url
    else:
        yield args.base_url


def run_point(
    args: argparse.Namespace,
    url: str,
    model: str,
    num: int,
    rate: float,
    conc: int | None,
    start: int = 0,
) -> dict[str, Any]:
    requests = build_requests(args, num, start)
    load = os.getloadavg()[0]
    records, duration = asyncio.run(
        run_load(
            url,
            requests,
            endpoint=args.endpoint,
            model=model,
            request_rate=rate,
            burstiness=args.burstiness,
            max_concurrency=conc,
            seed=args.seed,
            timeout_s=args.timeout,
        )
    )
    metrics = calculate_metrics(records, duration)
    metrics.update(
        num_prompts=num,
        request_rate=None if math.isinf(rate) else rate,
        max_concurrency=conc,
        load_average_start=load,
        load_average_end=os.getloadavg()[0],
    )
    return metrics


def print_point(m: dict[str, Any]) -> None:
    rate = "inf" if m["request_rate"] is None else f"{m['request_rate']:g}"
    print(
        f"rate {rate:>5} conc {m['max_concurrency'] or '-':>4} | ok {m['completed']:>3} "
        f"fail {m['failed']:>2} | {m['request_throughput']:6.2f} req/s "
        f"{m['output_throughput']:7.1f} out tok/s | TTFT med {m['ttft']['median_ms']:7.0f} "
        f"p99 {m['ttft']['p99_ms']:7.0f} | TPOT med {m['tpot']['median_ms']:6.1f} "
        f"p99 {m['tpot']['p99_ms']:6.1f} | ITL med {m['itl']['median_ms']:6.1f} | "
        f"E2E med {m['e2el']['median_ms']:7.0f} ms | load {m['load_average_start']:.1f}",
        flush=True,
    )


def print_report(m: dict[str, Any]) -> None:
    """One run in full, laid out like vLLM's `bench serve` summary."""
    print(f"{'Successful requests:':<40}{m['completed']}")
    print(f"{'Failed requests:':<40}{m['failed']}")
    print(f"{'Benchmark duration (s):':<40}{m['duration_s']:.2f}")
    print(f"{'Total input tokens:':<40}{m['total_input_tokens']}")
    print(f"{'Total generated tokens:':<40}{m['total_output_tokens']}")
    print(f"{'Request throughput (req/s):':<40}{m['request_throughput']:.2f}")
    print(f"{'Output token throughput (tok/s):':<40}{m['output_throughput']:.2f}")
    print(f"{'Total token throughput (tok/s):':<40}{m['total_token_throughput']:.2f}")
    print(f"{'Peak concurrent requests:':<40}{m['max_concurrent_requests']}")
    for key, title in (
        ("ttft", "Time to First Token"),
        ("tpot", "Time per Output Token (excl. 1st token)"),
        ("itl", "Inter-token Latency"),
        ("e2el", "End-to-end Latency"),
    ):
        print(f"{'-' * 15}{title}{'-' * 15}")
        for stat in ("mean", "median", "p90", "p99"):
            print(f"{f'{stat} {key.upper()} (ms):':<40}{m[key][f'{stat}_ms']:.2f}")
    if m["errors"]:
        print("errors:", *m["errors"], sep="\n  ")
    print(f"load average {m['load_average_start']:.2f} -> {m['load_average_end']:.2f}")


def sweep_points(args: argparse.Namespace) -> list[tuple[int, float, int | None]]:
    """(requests, rate, concurrency) per point: concurrencies at an infinite rate, then
    request rates without a cap."""
    lo, hi = args.sweep_prompts
    points: list[tuple[int, float, int | None]] = [
        (min(hi, max(lo, 2 * c)), math.inf, c) for c in args.sweep_concurrency
    ]
    points += [(min(hi, max(lo, int(8 * r))), r, None) for r in args.sweep_rates]
    return points


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    load_start = list(os.getloadavg())
    with server(args) as url:
        model = args.model or asyncio.run(served_model(url))
        if args.sweep:
            # One warm-up request (the first pays one-time costs), then each point on
            # prompts the earlier points did not send.
            run_point(args, url, model, 1, math.inf, 1)
            points, start = [], 1
            for num, rate, conc in sweep_points(args):
                points.append(run_point(args, url, model, num, rate, conc, start))
                start += num
                print_point(points[-1])
            results: dict[str, Any] = {"points": points}
        else:
            results = run_point(
                args, url, model, args.num_prompts, args.request_rate, args.max_concurrency
            )
            print_report(results)
    parameters = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    parameters.update(
        out=str(args.out) if args.out else None,
        plot=str(args.plot) if args.plot else None,
        request_rate=None if math.isinf(args.request_rate) else args.request_rate,
        model=model,
        server="rsllm (launched)" if args.launch else args.base_url,
    )
    name = "serving_sweep" if args.sweep else "serving"
    path = write_result(name, parameters, results, args.out, load_start)
    print(f"wrote {path}")
    if args.sweep:
        from plot import plot_serving_sweep

        chart = plot_serving_sweep(path, args.plot)
        print(f"drew {chart}")
    return results


if __name__ == "__main__":
    main()
