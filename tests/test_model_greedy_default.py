"""Greedy output of the default model (SmolLM2-135M-Instruct, float32) equals
transformers' `generate` token for token: 8 varied chat prompts, 64 new tokens each;
transformers one prompt at a time (no padding, min_new_tokens=64), rsllm all together in
one batch through the paged cache (blocks scattered), with min_tokens=64 masking EOS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _models import PagedDriver
from rsllm.engine.model_runner import ModelRunner
from rsllm.sampling_params import SamplingParams

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain recursion to a five-year-old.",
    "List three prime numbers greater than 100.",
    "Translate 'good morning' into Spanish and German.",
    "def fibonacci(n):\n    # complete this Python function",
    "Why is the sky blue? Answer in two sentences.",
    "Give me a short recipe for pancakes.",
]
NEW_TOKENS = 64


def chat_ids(tokenizer, text: str) -> list[int]:
    prompt = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    return tokenizer.encode(prompt, add_special_tokens=False).ids


@pytest.mark.slow
def test_greedy_equals_transformers_generate(default_model) -> None:
    import transformers
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(default_model.tokenizer_path)
    prompts = [chat_ids(tok, p) for p in PROMPTS]
    cfg = default_model.hf_config
    eos = cfg["eos_token_id"]
    eos_ids = eos if isinstance(eos, list) else [eos]

    runner = ModelRunner(
        cfg,
        default_model.state_dict,
        dtype=torch.float32,
        block_size=16,
        num_blocks=128,
        max_model_len=512,
        max_num_seqs=8,
        max_num_batched_tokens=1024,
    )
    driver = PagedDriver(runner.num_blocks, 16, seed=3)
    for i, ids in enumerate(prompts):
        driver.add(f"r{i}", ids)
        params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
        params._eos_token_ids = list(eos_ids)
        runner.add_request(f"r{i}", ids, params)
    outputs: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    for _ in range(NEW_TOKENS):
        batch = driver.batch()
        out = runner.execute_model(batch)
        driver.append(out.req_ids, out.sampled_token_ids)
        for r, t in zip(out.req_ids, out.sampled_token_ids.tolist(), strict=True):
            outputs[r].append(t)
    assert runner.requests["r0"].output_token_ids == outputs["r0"]

    hf_cfg = transformers.LlamaConfig.from_dict(cfg)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.load_state_dict(default_model.state_dict, strict=False)
    hf.tie_weights()
    for i, ids in enumerate(prompts):
        with torch.inference_mode():
            ref = hf.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                eos_token_id=eos_ids,
                pad_token_id=eos_ids[0],
            )[0, len(ids) :].tolist()
        assert outputs[f"r{i}"] == ref, (
            f"prompt {i} diverges at {_first_diff(outputs[f'r{i}'], ref)}"
        )
    # The prompts really are varied and the outputs are not all alike.
    assert len({tuple(o) for o in outputs.values()}) == len(prompts)
    assert np.mean([eos_ids[0] in o for o in outputs.values()]) < 1.0


def _first_diff(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), -1)
