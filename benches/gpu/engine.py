"""rsllm on the Llama-3-8B shape with dummy bf16 weights: single-stream decode, then
offline throughput (prompts of 512 random token ids, 256 output tokens, EOS ignored).

Written against vLLM's offline API, which `rsllm.LLM` follows."""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
from llama3_8b import CONFIG, RSLLM_MODEL, request_flops, total_params

from rsllm import LLM, SamplingParams


def timed_generate(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    wanted = params.max_tokens
    got = [len(o.outputs[0].token_ids) for o in outputs]
    if any(n != wanted for n in got):
        raise RuntimeError(f"asked for {wanted} tokens per request, got {sorted(set(got))}")
    return elapsed


def random_prompts(n: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(0, 128000) for _ in range(length)] for _ in range(n)]


def single_stream(llm: LLM, prompt_len: int, decode_tokens: int) -> dict[str, float]:
    """Decode tokens/s of one request: the time of N+1 tokens minus the time of 1
    (prefill and the first token), so prefill does not count."""
    prompt = random_prompts(1, prompt_len, seed=2)
    timed_generate(llm, prompt, SamplingParams(max_tokens=32, ignore_eos=True))  # warm-up
    first = timed_generate(llm, prompt, SamplingParams(max_tokens=1, ignore_eos=True))
    full = timed_generate(
        llm, prompt, SamplingParams(max_tokens=decode_tokens + 1, ignore_eos=True)
    )
    return {
        "prompt_len": prompt_len,
        "decode_tokens": decode_tokens,
        "first_token_s": first,
        "decode_s": full - first,
        "decode_tokens_per_s": decode_tokens / (full - first),
    }


def throughput(
    llm: LLM, num_prompts: int, input_len: int, output_len: int, budget_s: float
) -> dict[str, float | int | bool]:
    """Offline throughput; a probe on 64 requests first sizes the run to the budget, so
    that a slow engine still reports a number (with `scaled_down` set)."""
    probe_n = min(64, num_prompts)
    probe = timed_generate(
        llm,
        random_prompts(probe_n, input_len, seed=3),
        SamplingParams(max_tokens=output_len, ignore_eos=True),
    )
    fits = int(budget_s / (probe / probe_n))
    n = max(probe_n, min(num_prompts, fits))
    elapsed = timed_generate(
        llm,
        random_prompts(n, input_len, seed=4),
        SamplingParams(max_tokens=output_len, ignore_eos=True),
    )
    return {
        "num_prompts": n,
        "requested_prompts": num_prompts,
        "scaled_down": n < num_prompts,
        "input_len": input_len,
        "output_len": output_len,
        "elapsed_s": elapsed,
        "output_tokens_per_s": n * output_len / elapsed,
        "total_tokens_per_s": n * (input_len + output_len) / elapsed,
        "requests_per_s": n / elapsed,
        "model_flops_per_s": n * request_flops(input_len, output_len) / elapsed,
        "probe_64_s": probe,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--throughput-budget-s", type=float, default=90.0)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--decode-tokens", type=int, default=512)
    # A smaller shipped config (e.g. tiny-llama) smoke-tests this script on a CPU.
    parser.add_argument("--model", default=RSLLM_MODEL)
    args = parser.parse_args()

    result: dict[str, object] = {
        "engine": "rsllm",
        "model": args.model,
        "params": total_params(CONFIG),
        "weight_bytes_bf16": 2 * total_params(CONFIG),
    }
    t0 = time.perf_counter()
    llm = LLM(
        model=args.model,
        load_format="dummy",
        dtype="bfloat16",
        skip_tokenizer_init=True,
        max_model_len=max(args.input_len + args.output_len, 128 + args.decode_tokens) + 16,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=256,
    )
    result["engine_init_s"] = time.perf_counter() - t0
    try:
        result["single_stream"] = single_stream(
            llm, prompt_len=128, decode_tokens=args.decode_tokens
        )
        print(json.dumps(result, indent=2), flush=True)
        result["throughput"] = throughput(
            llm, args.num_prompts, args.input_len, args.output_len, args.throughput_budget_s
        )
    finally:
        print(json.dumps(result, indent=2))
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
