"""Offline throughput: rsllm's `LLM.generate` beside transformers' batched `generate` on
the same prompts, in the same run.

Issue 6's workload (the default): the default model in bfloat16, 64 prompts of 50-500
random tokens (seed 0), 128 new tokens each, EOS ignored, greedy. The reference is one
`generate` call over the whole batch, left-padded, same dtype. Prints requests/s, output
tokens/s and total tokens/s of each, the ratio, and the model-FLOPs utilisation
(2 x parameters x (prompt + output tokens) / time, against the bf16 matmul rate measured
in this run: a 2048^3 matmul, at the start and at the end, the higher of the two). Writes
JSON to benches/results/throughput.json.

    .venv/bin/python benches/throughput.py                      # issue 6's workload
    .venv/bin/python benches/throughput.py --repeat 2           # best of 2 alternating rounds
    .venv/bin/python benches/throughput.py --quick              # 16 prompts, 32 tokens
    .venv/bin/python benches/throughput.py --dataset conversations --num-prompts 64
    .venv/bin/python benches/throughput.py --input-len 128 --output-len 128 --num-prompts 32
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

from bench_lib.datasets import BenchRequest, conversation_requests, random_requests
from bench_lib.report import write_result
from rsllm import LLM, SamplingParams
from rsllm.chat_template import render_chat

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model path (default: the embedded SmolLM2-135M GGUF)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--dataset", choices=("random", "conversations"), default="random")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument(
        "--input-len", type=int, help="fixed prompt length (random dataset); overrides the range"
    )
    p.add_argument(
        "--input-len-range",
        type=int,
        nargs=2,
        default=(50, 500),
        metavar=("MIN", "MAX"),
        help="uniform prompt lengths (random dataset)",
    )
    p.add_argument("--output-len", type=int, default=128, help="new tokens per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="16 prompts, 32 new tokens")
    p.add_argument("--skip-reference", action="store_true", help="rsllm only")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds (engines alternate), best time of each; >1 turns rsllm's prefix cache off",
    )
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--peak-matmul-size", type=int, default=2048, help="n of the n^3 matmul")
    p.add_argument("--out", type=Path, help="JSON path (default benches/results/throughput.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.num_prompts, args.output_len = 16, 32
    if args.input_len is not None:
        args.input_len_range = (args.input_len, args.input_len)
    return args


def matmul_peak_flops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """The best rate of one large square matmul in `dtype` on this machine, now."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)  # warm-up: oneDNN picks and caches its kernel
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct weights: a tied lm_head shares the embedding's storage, counted once."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[p.data_ptr()] = p.numel()
    return sum(seen.values())


def build_requests(args: argparse.Namespace, llm: LLM) -> list[BenchRequest]:
    tokenizer = llm.get_tokenizer()
    if args.dataset == "random":
        return random_requests(
            args.num_prompts,
            tuple(args.input_len_range),
            args.output_len,
            tokenizer.vocab_size,
            seed=args.seed,
        )
    template = tokenizer.chat_template
    if template is None:
        raise SystemExit("the conversations dataset needs a model with a chat template")

    def render(messages: Any) -> list[int]:
        text = render_chat(
            template,
            messages,
            bos_token=tokenizer.bos_token,
            eos_token=tokenizer.eos_token,
            add_generation_prompt=True,
        )
        return tokenizer.encode(text)

    return conversation_requests(args.num_prompts, render, args.output_len)


def rates(requests: list[BenchRequest], elapsed: float, params: int, peak: float) -> dict:
    prompt = sum(r.prompt_len for r in requests)
    output = sum(r.output_len for r in requests)
    return {
        "elapsed_s": elapsed,
        "prompt_tokens": prompt,
        "output_tokens": output,
        "requests_per_s": len(requests) / elapsed,
        "output_tokens_per_s": output / elapsed,
        "total_tokens_per_s": (prompt + output) / elapsed,
        "mfu": 2 * params * (prompt + output) / elapsed / peak,
    }


def run_rsllm(llm: LLM, requests: list[BenchRequest], warm_up: bool = True) -> float:
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [
        SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True) for r in requests
    ]
    if warm_up:
        llm.generate(prompts[:2], params[:2], use_tqdm=False)
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    for r, o in zip(requests, outputs, strict=True):
        if len(o.outputs[0].token_ids) != r.output_len:
            raise RuntimeError(f"rsllm gave {len(o.outputs[0].token_ids)} of {r.output_len} tokens")
    return elapsed


def load_transformers(model: str | None, dtype: torch.dtype) -> Any:
    """The same weights in transformers: a GGUF through its own GGUF loader (the
    default model's file, dequantized), or an HF directory."""
    from transformers import AutoModelForCausalLM

    from rsllm.model.model_path import default_model_path

    path = Path(model) if model else default_model_path()
    if path.suffix == ".gguf":
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    else:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return hf.eval()


def describe_reference(hf: Any) -> dict[str, str]:
    """What the reference computed with: a GGUF may load as dense weights (dequantized)
    or as packed blocks behind transformers' GGUF kernels, which changes its speed."""
    proj = hf.model.layers[0].mlp.gate_proj
    return {
        "linear": type(proj).__name__,
        "weight_dtype": str(proj.weight.dtype),
        "attn_implementation": str(hf.config._attn_implementation),
    }


def run_transformers(
    hf: Any, requests: list[BenchRequest], pad_id: int, warm_up: bool = True
) -> float:
    """One `generate` over the whole batch, left-padded; exactly output_len new tokens."""
    out_len = requests[0].output_len
    if any(r.output_len != out_len for r in requests):
        raise ValueError("one transformers batch needs one output length")
    width = max(r.prompt_len for r in requests)
    ids = torch.full((len(requests), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(requests):
        ids[i, width - r.prompt_len :] = torch.tensor(r.prompt_token_ids)
        mask[i, width - r.prompt_len :] = 1
    kwargs = {"do_sample": False, "pad_token_id": pad_id}
    with torch.inference_mode():
        if warm_up:
            hf.generate(ids[:2, -8:], attention_mask=mask[:2, -8:], max_new_tokens=2, **kwargs)
        t0 = time.perf_counter()
        out = hf.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=out_len,
            min_new_tokens=out_len,  # EOS ignored: it cannot end a row early
            **kwargs,
        )
        elapsed = time.perf_counter() - t0
    if out.shape[1] - width != out_len:
        raise RuntimeError(f"transformers gave {out.shape[1] - width} of {out_len} tokens")
    return elapsed


def print_table(rows: dict[str, dict], load: tuple[float, float]) -> None:
    print(f"{'engine':<14}{'req/s':>8}{'out tok/s':>11}{'total tok/s':>13}{'MFU':>8}{'time s':>9}")
    for name, r in rows.items():
        print(
            f"{name:<14}{r['requests_per_s']:>8.2f}{r['output_tokens_per_s']:>11.1f}"
            f"{r['total_tokens_per_s']:>13.1f}{100 * r['mfu']:>7.1f}%{r['elapsed_s']:>9.1f}"
        )
    print(f"load average {load[0]:.2f} -> {load[1]:.2f} on {os.cpu_count()} cores")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    dtype = DTYPES[args.dtype]
    llm = LLM(
        model=args.model,
        dtype=args.dtype,
        seed=args.seed,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        # A later round would find the first round's prompts in the prefix cache.
        enable_prefix_caching=args.repeat == 1,
    )
    params = count_parameters(llm.llm_engine.runner.model)
    requests = build_requests(args, llm)
    peaks = [matmul_peak_flops(torch.bfloat16, args.peak_matmul_size)]
    print(f"bf16 matmul peak {peaks[0] / 1e9:.0f} GFLOP/s; {len(requests)} prompts", flush=True)
    reference: dict[str, str] = {}
    hf = None
    if not args.skip_reference:
        hf = load_transformers(args.model, dtype)
        reference = describe_reference(hf)
    pad_id = llm.get_tokenizer().eos_token_id or 0
    # Rounds alternate the engines, and each keeps its best time: on a shared machine a
    # burst of someone else's work then slows one round, not one engine.
    times: dict[str, list[float]] = {"rsllm": []}
    for round_ in range(args.repeat):
        times["rsllm"].append(run_rsllm(llm, requests, warm_up=round_ == 0))
        print(f"round {round_ + 1}: rsllm {times['rsllm'][-1]:.1f} s", flush=True)
        if hf is not None:
            times.setdefault("transformers", []).append(
                run_transformers(hf, requests, pad_id, warm_up=round_ == 0)
            )
            print(f"round {round_ + 1}: transformers {times['transformers'][-1]:.1f} s", flush=True)
    elapsed = {name: min(ts) for name, ts in times.items()}
    # The peak again at the end: on a busy machine the two differ, and the higher one is
    # the nearer to what the cores can do (the lower MFU: the conservative figure).
    peaks.append(matmul_peak_flops(torch.bfloat16, args.peak_matmul_size))
    peak = max(peaks)
    rows = {name: rates(requests, t, params, peak) for name, t in elapsed.items()}
    for name, ts in times.items():
        rows[name]["elapsed_s_each_round"] = ts
    if reference:
        rows["transformers"]["model"] = reference
    load_end = os.getloadavg()
    print(
        f"{args.dataset} dataset: {len(requests)} prompts, "
        f"{sum(r.prompt_len for r in requests)} prompt tokens, {args.output_len} new each, "
        f"{args.dtype}; {params / 1e6:.1f}M parameters; bf16 matmul peak "
        f"{peaks[0] / 1e9:.0f} GFLOP/s at the start, {peaks[1] / 1e9:.0f} at the end"
    )
    print_table(rows, (load_start[0], load_end[0]))
    results: dict[str, Any] = {
        **rows,
        "parameters_count": params,
        "bf16_matmul_peak_flops": peak,
        "bf16_matmul_peak_flops_start_end": peaks,
    }
    if "transformers" in rows:
        ratio = rows["rsllm"]["output_tokens_per_s"] / rows["transformers"]["output_tokens_per_s"]
        results["ratio_output_tokens_per_s"] = ratio
        ref = rows["transformers"]["model"]
        print(
            f"rsllm / transformers: {ratio:.2f}x output tokens/s (transformers: "
            f"{ref['linear']} {ref['weight_dtype']} weights, "
            f"{ref['attn_implementation']} attention)"
        )
    parameters = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    parameters["out"] = str(args.out) if args.out else None
    path = write_result("throughput", parameters, results, args.out, list(load_start))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
