"""Cost of constrained decoding: output tokens/s of 32 concurrent requests on the default
model, with and without a grammar, in the same run (alternating rounds, best of each).

The constraint is a JSON schema whose string can only end after far more tokens than
`--max-tokens`, so both runs produce exactly the same number of tokens (the unconstrained
run uses ignore_eos) and the difference is the grammar's cost: the bitmask fill, its
application in the sampler and advancing the matchers. Also prints xgrammar's compile time
and its mask-fill time for 32 rows, the numbers behind choosing it. Writes JSON to
benches/results/structured.json.

    .venv/bin/python benches/structured.py [--requests 32] [--max-tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from rsllm import LLM, SamplingParams, StructuredOutputsParams

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "minLength": 4000}},
    "required": ["answer"],
}


def run(llm: LLM, prompts: list[str], params: SamplingParams) -> tuple[float, float, int]:
    """(wall s, CPU s of this process, output tokens). CPU time is the steadier measure
    on a machine shared with other jobs."""
    started, cpu = time.perf_counter(), time.process_time()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return elapsed, cpu, sum(len(o.outputs[0].token_ids) for o in outs)


def engine_micro(llm: LLM, n: int) -> dict[str, float]:
    """xgrammar alone: compile the schema (uncached) and fill n rows of masks per step."""
    import xgrammar

    backend = llm.llm_engine.structured.backend
    schema = dict(SCHEMA, title=f"uncached-{time.time()}")
    started = time.perf_counter()
    grammar = backend.compile(StructuredOutputsParams(json=schema))
    compile_ms = (time.perf_counter() - started) * 1e3
    matchers = [backend.matcher(grammar) for _ in range(n)]
    bitmask = xgrammar.allocate_token_bitmask(n, backend.vocab_size)
    batch = xgrammar.BatchGrammarMatcher(max_threads=1)
    token = llm.get_tokenizer().encode('{"answer": "')
    started = time.perf_counter()
    for tok in token:
        batch.batch_fill_next_token_bitmask(matchers, bitmask)
        for m in matchers:
            m.accept_token(tok)
    fill_ms = (time.perf_counter() - started) * 1e3 / len(token)
    return {"compile_ms": compile_ms, "fill_ms_per_step": fill_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    llm = LLM(max_model_len=512, max_num_seqs=args.requests, seed=0)
    prompts = [f"Describe item number {i} in a few words." for i in range(args.requests)]
    base = SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=0, ignore_eos=True)
    constrained = base.clone(structured_outputs=StructuredOutputsParams(json=SCHEMA))
    load_start = os.getloadavg()[0]
    run(llm, prompts[:4], base.clone(max_tokens=4))  # warm-up (and the grammar compiled)
    run(llm, prompts[:4], constrained.clone(max_tokens=4))
    plain_rates, constrained_rates = [], []
    plain_cpu, constrained_cpu = [], []
    for _ in range(args.rounds):
        for params, rates, cpu_rates in (
            (base, plain_rates, plain_cpu),
            (constrained, constrained_rates, constrained_cpu),
        ):
            elapsed, cpu, tokens = run(llm, prompts, params)
            assert tokens == args.requests * args.max_tokens, tokens
            rates.append(tokens / elapsed)
            cpu_rates.append(tokens / cpu)
    plain, constr = max(plain_rates), max(constrained_rates)
    ratio = constr / plain
    cpu_ratio = max(constrained_cpu) / max(plain_cpu)
    micro = engine_micro(llm, args.requests)
    results = {
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "unconstrained_tok_s": plain_rates,
        "constrained_tok_s": constrained_rates,
        "best_unconstrained_tok_s": plain,
        "best_constrained_tok_s": constr,
        "ratio": ratio,
        "unconstrained_tok_per_cpu_s": plain_cpu,
        "constrained_tok_per_cpu_s": constrained_cpu,
        "cpu_ratio": cpu_ratio,
        "overhead_pct": (1 - ratio) * 100,
        "xgrammar": micro,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg()[0],
    }
    out = Path(__file__).parent / "results" / "structured.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"{args.requests} concurrent requests x {args.max_tokens} tokens, best of {args.rounds}")
    print(f"  unconstrained: {plain:8.1f} output tok/s   (rounds: {plain_rates})")
    print(f"  JSON schema:   {constr:8.1f} output tok/s   (rounds: {constrained_rates})")
    print(f"  ratio {ratio:.3f}  (overhead {(1 - ratio) * 100:.1f}%, target <= 10%)")
    print(
        f"  per CPU second: {max(plain_cpu):.1f} vs {max(constrained_cpu):.1f} tok, "
        f"ratio {cpu_ratio:.3f} (overhead {(1 - cpu_ratio) * 100:.1f}%)"
    )
    print(
        f"  xgrammar: compile {micro['compile_ms']:.1f} ms, "
        f"mask fill {micro['fill_ms_per_step']:.2f} ms/step for {args.requests} rows"
    )
    print(f"  load average {load_start:.1f} -> {results['load_avg_end']:.1f}; wrote {out}")


if __name__ == "__main__":
    main()
