"""The reference: transformers' `generate` on the same Llama-3-8B shape, dummy bf16
weights created on the device, a batch of at most 16 requests of 512 prompt tokens and
256 new ones (no padding: every prompt has the same length)."""

from __future__ import annotations

import argparse
import json
import time

import torch
from llama3_8b import CONFIG, request_flops
from transformers import LlamaConfig, LlamaForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=256)
    args = parser.parse_args()

    config = LlamaConfig(**{k: v for k, v in CONFIG.items() if k != "architectures"})
    t0 = time.perf_counter()
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(default)
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128000, (args.num_prompts, args.input_len), generator=gen).cuda()
    kwargs = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(
            ids, max_new_tokens=args.output_len, min_new_tokens=args.output_len, **kwargs
        )
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    generated = (out.shape[1] - args.input_len) * args.num_prompts
    result = {
        "engine": "transformers.generate",
        "num_prompts": args.num_prompts,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "generated_tokens": generated,
        "elapsed_s": elapsed,
        "output_tokens_per_s": generated / elapsed,
        "model_flops_per_s": args.num_prompts
        * request_flops(args.input_len, args.output_len)
        / elapsed,
        "model_init_s": load_s,
    }
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
