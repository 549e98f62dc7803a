"""Model execution speed on this machine: rsllm's runner beside transformers, same run.

Prints ms per decode step at batch 1, 8 (context 128) and 64 (context 512) in float32 and
bfloat16, prefill tokens/s for a 512-token prompt, the time of the model's matmuls alone
at batch 64, the decode attention alone at batch 64 (and the K/V it reads per second,
beside what torch's sum reads from memory in the same run), and transformers'
single-stream decode and 512-token prefill. Writes JSON to benches/results/model.json.

    .venv/bin/python benches/model.py [--steps 20] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from rsllm.engine.model_runner import ModelRunner
from rsllm.model.attention import decode_kernel
from rsllm.model.layers import Linear
from rsllm.model.loader import load_model
from rsllm.sampling_params import SamplingParams

BLOCK = 16


def batch_of(rows: list[tuple[str, list[int], int, list[int]]]) -> SimpleNamespace:
    """rows: (req_id, new token ids, num_computed, block ids) -> the step arrays."""
    ids, pos, slots, qsl, seq_lens, tables, last = [], [], [], [0], [], [], []
    for _, toks, done, blocks in rows:
        p = np.arange(done, done + len(toks))
        ids += toks
        pos += p.tolist()
        slots += (np.asarray(blocks)[p // BLOCK] * BLOCK + p % BLOCK).tolist()
        qsl.append(qsl[-1] + len(toks))
        seq_lens.append(done + len(toks))
        tables.append(blocks)
        last.append(qsl[-1] - 1)
    bt = np.zeros((len(rows), max(map(len, tables))), dtype=np.int32)
    for i, t in enumerate(tables):
        bt[i, : len(t)] = t
    return SimpleNamespace(
        input_ids=np.array(ids, np.int32),
        positions=np.array(pos, np.int32),
        slot_mapping=np.array(slots, np.int64),
        query_start_loc=np.array(qsl, np.int32),
        seq_lens=np.array(seq_lens, np.int32),
        block_tables=bt,
        logits_indices=np.array(last, np.int32),
        req_ids=[r[0] for r in rows],
        sampling_mask=np.ones(len(rows), np.bool_),
        num_computed_tokens=np.array([r[2] for r in rows], np.int32),
    )


def timed(fn, repeat: int) -> float:
    """Median seconds of `repeat` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_rsllm(loaded, dtype: torch.dtype, steps: int) -> dict:
    res: dict = {}
    cases = [(1, 128), (8, 128), (64, 512)]
    blocks_per_req = 512 // BLOCK + steps // BLOCK + 2
    runner = ModelRunner(
        loaded.hf_config,
        loaded.state_dict,
        dtype=dtype,
        num_blocks=65 * blocks_per_req + 8,
        max_model_len=1024,
        max_num_seqs=64,
        max_num_batched_tokens=1024,
    )
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, 40000, 512).tolist()
    greedy = SamplingParams(temperature=0.0, max_tokens=4096)

    # Prefill: one 512-token prompt (median of 3).
    src = list(range(1, 1 + 512 // BLOCK))

    def prefill() -> None:
        runner.add_request("p", prompt, greedy)
        runner.execute_model(batch_of([("p", prompt, 0, src)]))
        runner.remove_request("p")

    t = timed(prefill, 3)
    res["prefill_512_tok_per_s"] = 512 / t
    for num, ctx in cases:
        # Each request gets its own copy of the prompt's K/V (distinct blocks, as after
        # separate prefills), so decode reads as much memory as in real serving.
        reqs = []
        nxt = 1 + 512 // BLOCK
        for i in range(num):
            blocks = list(range(nxt, nxt + blocks_per_req))
            nxt += blocks_per_req
            for k, v in runner.kv_caches:
                k[blocks[: ctx // BLOCK]] = k[src[: ctx // BLOCK]]
                v[blocks[: ctx // BLOCK]] = v[src[: ctx // BLOCK]]
            runner.add_request(f"d{i}", prompt[:ctx], greedy)
            reqs.append([f"d{i}", [int(prompt[ctx - 1])], ctx - 1, blocks])
        times = []
        for _ in range(steps):
            b = batch_of([tuple(r) for r in reqs])
            t0 = time.perf_counter()
            out = runner.execute_model(b)
            times.append(time.perf_counter() - t0)
            for r, tok in zip(reqs, out.sampled_token_ids.tolist(), strict=True):
                r[2] += 1
                r[1] = [tok]
        res[f"decode_ms_b{num}_ctx{ctx}"] = 1000 * statistics.median(times[2:])
        if num == 64 and runner.backend.name == "cpu":
            res.update(attention_alone(runner, [r[3] for r in reqs], ctx, dtype))
        for i in range(num):
            runner.remove_request(f"d{i}")
    # The model's matmuls alone at batch 64 (the same Linear modules, packed or not).
    linears = [m for m in runner.model.modules() if isinstance(m, Linear)]
    xs = [torch.randn(64, m.weight.shape[1], dtype=dtype) for m in linears]

    @torch.inference_mode()
    def matmuls() -> None:
        for m, x in zip(linears, xs, strict=True):
            m(x)

    res["matmuls_only_ms_b64"] = 1000 * timed(matmuls, 5)
    res["decode_b64_over_matmuls"] = res["decode_ms_b64_ctx512"] / res["matmuls_only_ms_b64"]
    return res


def attention_alone(runner, tables: list[list[int]], ctx: int, dtype: torch.dtype) -> dict:
    """The decode attention kernel alone over every layer's cache, for the batch's
    block tables at context `ctx`: its time and the rate at which it reads K and V."""
    k_cache = runner.kv_caches[0][0]
    a = runner.arch
    q = torch.randn(len(tables), a.num_attention_heads, a.head_dim).to(dtype)
    bt = np.array([t[: ctx // BLOCK] for t in tables], np.int32)
    lens = np.full(len(tables), ctx, np.int32)

    def attend() -> None:
        for k, v in runner.kv_caches:
            decode_kernel(q, k, v, bt, lens, 0.125)

    t = timed(attend, 5)
    kv_bytes = 2 * len(tables) * ctx * a.num_key_value_heads * a.head_dim * k_cache.element_size()
    return {
        "attention_ms_b64": 1000 * t,
        "attention_read_gb_s": kv_bytes * len(runner.kv_caches) / t / 1e9,
    }


def memory_read_gb_s() -> float:
    """What torch's sum reads from memory per second over 1 GiB (best of 3): the
    machine's bandwidth as the decode attention sees it, in this run."""
    x = torch.ones(1 << 29, dtype=torch.bfloat16)
    best = min(timed(lambda: x.sum(), 1) for _ in range(3))
    return x.numel() * x.element_size() / best / 1e9


def bench_transformers(loaded, dtype: torch.dtype, new_tokens: int) -> dict:
    import transformers

    cfg = transformers.LlamaConfig.from_dict(loaded.hf_config)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.load_state_dict(loaded.state_dict, strict=False)
    hf.tie_weights()
    hf = hf.to(dtype)
    ids = torch.randint(100, 40000, (1, 128), generator=torch.Generator().manual_seed(0))
    eos = 0  # a token the random prompt never produces: no early stop

    def gen(n: int) -> None:
        with torch.inference_mode():
            hf.generate(
                ids,
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=0,
                eos_token_id=eos,
            )

    t_long = timed(lambda: gen(new_tokens), 1)
    t_one = timed(lambda: gen(1), 2)
    prompt = torch.randint(100, 40000, (1, 512), generator=torch.Generator().manual_seed(1))

    def prefill() -> None:
        with torch.inference_mode():
            hf(prompt, logits_to_keep=1)

    t_pre = timed(prefill, 2)
    return {
        "decode_ms_b1_ctx128": 1000 * (t_long - t_one) / (new_tokens - 1),
        "prefill_512_tok_per_s": 512 / t_pre,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--hf-tokens", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None)
    results: dict = {"threads": args.threads, "load_avg_start": os.getloadavg()[0]}
    results["memory_read_gb_s_start"] = memory_read_gb_s()
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        ours = bench_rsllm(loaded, dtype, args.steps)
        ref = bench_transformers(loaded, dtype, args.hf_tokens)
        results[name] = {"rsllm": ours, "transformers": ref}
        print(f"== {name}")
        for key, val in ours.items():
            print(f"  rsllm        {key:28s} {val:10.2f}")
        for key, val in ref.items():
            print(f"  transformers {key:28s} {val:10.2f}")
        tok_s = 1000 / ours["decode_ms_b1_ctx128"]
        speedup = ref["decode_ms_b1_ctx128"] / ours["decode_ms_b1_ctx128"]
        print(f"  single-stream decode: rsllm {tok_s:.1f} tok/s, {speedup:.2f}x transformers")
    results["load_avg_end"] = os.getloadavg()[0]
    results["memory_read_gb_s_end"] = memory_read_gb_s()
    out = Path(__file__).parent / "results" / "model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(
        f"load average {results['load_avg_start']:.1f} -> {results['load_avg_end']:.1f}; "
        f"memory read {results['memory_read_gb_s_start']:.1f} -> "
        f"{results['memory_read_gb_s_end']:.1f} GB/s; wrote {out}"
    )


if __name__ == "__main__":
    main()
