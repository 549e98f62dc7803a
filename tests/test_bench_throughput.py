"""The offline throughput benchmark and its datasets on a tiny run: rsllm and the
transformers reference on the same prompts, the numbers derived from the token counts,
the JSON written; the conversation set kept in the repo is the one its script makes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parents[1] / "benches"
sys.path.insert(0, str(BENCHES))

from bench_lib.datasets import (  # noqa: E402
    CONVERSATIONS,
    FIRST_ORDINARY_ID,
    conversation_requests,
    load_conversations,
    random_requests,
)


def test_random_requests_are_seeded_and_in_range():
    a = random_requests(50, (5, 40), 7, vocab_size=300, seed=3)
    assert a == random_requests(50, (5, 40), 7, vocab_size=300, seed=3)
    assert a != random_requests(50, (5, 40), 7, vocab_size=300, seed=4)
    assert all(5 <= r.prompt_len <= 40 and r.output_len == 7 for r in a)
    assert len({r.prompt_len for r in a}) > 10
    ids = [t for r in a for t in r.prompt_token_ids]
    assert min(ids) >= FIRST_ORDINARY_ID and max(ids) < 300
    with pytest.raises(ValueError):
        random_requests(1, (10, 5), 7, vocab_size=300)


def test_conversation_set_is_reproducible(tmp_path):
    out = tmp_path / "c.jsonl"
    script = BENCHES / "datasets" / "make_conversations.py"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True)
    assert out.read_text() == CONVERSATIONS.read_text()
    rows = load_conversations()
    assert len(rows) == 200
    assert all(r["messages"][-1]["role"] == "user" and 16 <= r["output_len"] <= 512 for r in rows)
    reqs = conversation_requests(250, lambda m: [len(m)], output_len=None)
    assert [r.messages for r in reqs[200:]] == [r["messages"] for r in rows[:50]]
    assert reqs[0].output_len == rows[0]["output_len"]


@pytest.mark.slow
def test_tiny_throughput_run_writes_both_engines(tiny_llama_dir, tmp_path):
    import throughput

    out = tmp_path / "throughput.json"
    argv = ["--model", str(tiny_llama_dir), "--dtype", "float32", "--num-prompts", "3"]
    argv += ["--input-len-range", "5", "20", "--output-len", "4", "--peak-matmul-size", "256"]
    argv += ["--repeat", "2"]
    results = throughput.main([*argv, "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["results"] == json.loads(json.dumps(results))
    assert report["parameters"]["num_prompts"] == 3
    assert report["machine"]["cpu_model"] and report["versions"]["rsllm"]
    prompts = random_requests(3, (5, 20), 4, vocab_size=49152, seed=0)
    prompt_tokens = sum(r.prompt_len for r in prompts)
    for engine in ("rsllm", "transformers"):
        row = results[engine]
        assert len(row["elapsed_s_each_round"]) == 2
        assert row["elapsed_s"] == min(row["elapsed_s_each_round"])
        assert (row["prompt_tokens"], row["output_tokens"]) == (prompt_tokens, 12)
        assert row["output_tokens_per_s"] == pytest.approx(12 / row["elapsed_s"])
        assert row["total_tokens_per_s"] == pytest.approx((prompt_tokens + 12) / row["elapsed_s"])
        flops = 2 * results["parameters_count"] * (prompt_tokens + 12)
        assert row["mfu"] == pytest.approx(
            flops / row["elapsed_s"] / results["bf16_matmul_peak_flops"]
        )
    assert results["ratio_output_tokens_per_s"] == pytest.approx(
        results["rsllm"]["output_tokens_per_s"] / results["transformers"]["output_tokens_per_s"]
    )
    # The tiny model's distinct weights: tied embeddings counted once.
    assert (
        results["parameters_count"]
        == 49152 * 64 + 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64) + 64
    )
