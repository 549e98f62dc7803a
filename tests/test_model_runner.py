"""The model runner on a tiny model: seeded sampling continues identically after a
preemption (recompute) and whatever else is in the batch; prompt logprobs equal
transformers' log_softmax; bad input raises rsllm's errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _models import PagedDriver, hf_model, tiny_hf_config
from rsllm.engine.model_runner import ModelRunner
from rsllm.errors import InvalidRequestError, UnknownRequestError
from rsllm.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_hf_config("qwen2")
    return cfg, hf_model(cfg)


def make_runner(tiny, **kw) -> ModelRunner:
    cfg, hf = tiny
    return ModelRunner(
        cfg,
        hf.state_dict(),
        dtype=torch.float32,
        block_size=4,
        num_blocks=64,
        max_model_len=128,
        max_num_seqs=8,
        max_num_batched_tokens=256,
        **kw,
    )


def generate(runner, driver, req_ids, steps, preempt_at=None):
    out = {r: [] for r in req_ids}
    for step in range(steps):
        if step == preempt_at:  # free the blocks, recompute prompt + outputs as a prefill
            for r in req_ids:
                tokens = driver.seqs[r].tokens
                driver.free_request(r)
                driver.add(r, tokens)
        b = driver.batch()
        o = runner.execute_model(b)
        driver.append(o.req_ids, o.sampled_token_ids)
        for r, t in zip(o.req_ids, o.sampled_token_ids.tolist(), strict=True):
            out[r].append(t)
    return out


def test_seeded_sampling_survives_preemption_and_batch_changes(tiny):
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=50)
    prompt = [5, 6, 7, 8, 9]
    runs = []
    for others, preempt in ((0, None), (3, None), (2, 4)):
        runner = make_runner(tiny, seed=others)  # the global generator differs too
        driver = PagedDriver(64, 4, seed=others)
        ids = ["s"] + [f"o{i}" for i in range(others)]
        for r in ids:
            p = prompt if r == "s" else [1 + len(r), 2, 3]
            driver.add(r, p)
            runner.add_request(r, p, params if r == "s" else SamplingParams(temperature=1.0))
        runs.append(generate(runner, driver, ids, 10, preempt)["s"])
    assert runs[0] == runs[1] == runs[2]
    assert len(set(runs[0])) > 2


@torch.inference_mode()
def test_prompt_logprobs_match_transformers_with_chunks(tiny):
    hf = tiny[1]
    runner = make_runner(tiny)
    driver = PagedDriver(64, 4)
    prompt = np.random.default_rng(1).integers(0, 97, 13).tolist()
    driver.add("p", prompt)
    runner.add_request("p", prompt, SamplingParams(prompt_logprobs=2, logprobs=3))
    got = {}
    for chunk in (5, 8):  # a chunked prefill: only the last chunk samples
        o = runner.execute_model(driver.batch({"p": chunk}))
        got[o.prompt_logprobs["p"].start] = o.prompt_logprobs["p"]
    ref = hf(torch.tensor([prompt])).logits[0].log_softmax(-1)
    first, second = got[1], got[6]
    ids = np.concatenate([first.token_ids, second.token_ids])
    lps = np.concatenate([first.logprobs, second.logprobs])
    assert ids.shape == (12, 3) and ids[:, 0].tolist() == prompt[1:]
    expected = ref[:-1].gather(1, torch.from_numpy(ids).long())
    np.testing.assert_allclose(lps, expected.numpy(), atol=1e-4)
    assert ids[:, 1:].tolist() == ref[:-1].topk(2).indices.tolist()
    # the sampled token's logprobs (raw logits of the last prompt position)
    assert o.logprobs is not None and o.num_logprobs == [3]
    np.testing.assert_allclose(
        o.logprobs.logprobs[0], ref[-1][o.logprobs.token_ids[0]].numpy(), atol=1e-4
    )


def test_bad_input_raises_rsllm_errors(tiny):
    runner = make_runner(tiny)
    with pytest.raises(UnknownRequestError):
        runner.remove_request("nope")
    with pytest.raises(InvalidRequestError):
        runner.add_request("x", [1], SamplingParams(allowed_token_ids=[5000]))
    runner.add_request("x", [1], SamplingParams())
    with pytest.raises(InvalidRequestError):
        runner.add_request("x", [1], SamplingParams())
    driver = PagedDriver(64, 4)
    driver.add("y", [1, 2])
    with pytest.raises(UnknownRequestError):
        runner.execute_model(driver.batch())


def test_kv_cache_sized_from_memory_budget(tiny):
    runner = make_runner(tiny)
    runner2 = ModelRunner(
        tiny[0],
        tiny[1].state_dict(),
        dtype=torch.float32,
        block_size=4,
        kv_cache_memory_bytes=100 * runner.block_bytes + 5,
        max_model_len=128,
        max_num_seqs=8,
        max_num_batched_tokens=256,
    )
    assert runner2.num_blocks == 100
    # The CPU backend's tiles: keys [blocks, Hkv, D/2, BS, 2], values [blocks, Hkv, BS/2, D, 2].
    k, v = runner2.kv_caches[0]
    assert k.shape == (100, 2, 8, 4, 2) and v.shape == (100, 2, 2, 16, 2)
    assert 2 * k.numel() * k.element_size() * len(runner2.kv_caches) == 100 * runner.block_bytes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_greedy_half_precision_decode_on_each_backend(tiny, dtype: torch.dtype) -> None:
    """Greedy single-stream decode in half precision runs on both CPU backends (the cpu
    backend's one-row Rust path and argmax, or torch's ops where it has no kernel: fp16,
    where the two backends must then agree token for token)."""
    cfg, hf = tiny
    outs = []
    for backend in ("cpu", "torch"):
        runner = ModelRunner(
            cfg,
            hf.state_dict(),
            dtype=dtype,
            block_size=4,
            num_blocks=64,
            max_model_len=128,
            max_num_seqs=8,
            max_num_batched_tokens=256,
            attention_backend=backend,
        )
        runner.add_request("r", [5, 6, 7, 8, 9], SamplingParams(temperature=0.0, max_tokens=20))
        driver = PagedDriver(64, 4)
        driver.add("r", [5, 6, 7, 8, 9])
        outs.append(generate(runner, driver, ["r"], 12)["r"])
    vocab = cfg["vocab_size"]
    assert all(len(o) == 12 and all(0 <= t < vocab for t in o) for o in outs)
    if dtype == torch.float16:
        assert outs[0] == outs[1]
