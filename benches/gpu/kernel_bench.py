"""Kernel timings on the GPU, each beside torch's own op on the same data in this run:
paged decode attention (split-K) and paged prefill attention against SDPA on contiguous
K/V, RMSNorm and SiLU-and-mul against eager torch. Llama-3-8B heads, bf16."""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from rsllm.kernels.activation import silu_and_mul
from rsllm.kernels.attention import paged_attention
from rsllm.kernels.norm import fused_add_rms_norm

HQ, HKV, D, BS = 32, 8, 128, 16
DT = torch.bfloat16


def paged_batch(num_requests: int, q_len: int, seq_len: int) -> dict[str, object]:
    blocks_per = seq_len // BS
    num_blocks = num_requests * blocks_per + 1
    perm = torch.randperm(num_blocks - 1) + 1  # scattered blocks, as in a busy cache
    tables = perm.view(num_requests, blocks_per).to(torch.int32).cuda()
    return dict(
        query=torch.randn((num_requests * q_len, HQ, D), dtype=DT, device="cuda"),
        key_cache=torch.randn((num_blocks, BS, HKV, D), dtype=DT, device="cuda"),
        value_cache=torch.randn((num_blocks, BS, HKV, D), dtype=DT, device="cuda"),
        query_start_loc=(torch.arange(num_requests + 1, dtype=torch.int32) * q_len).cuda(),
        seq_lens=torch.full((num_requests,), seq_len, dtype=torch.int32, device="cuda"),
        block_tables=tables,
        scale=D**-0.5,
        max_query_len=q_len,
        max_seq_len=seq_len,
    )


def sdpa_ms(num_requests: int, q_len: int, seq_len: int) -> float:
    q = torch.randn((num_requests, HQ, q_len, D), dtype=DT, device="cuda")
    k = torch.randn((num_requests, HKV, seq_len, D), dtype=DT, device="cuda")
    v = torch.randn_like(k)
    causal = q_len == seq_len
    return do_bench(
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    )


def attention_case(name: str, num_requests: int, q_len: int, seq_len: int) -> dict:
    batch = paged_batch(num_requests, q_len, seq_len)
    ms = do_bench(lambda: paged_attention(**batch))
    kv_bytes = 2 * num_requests * seq_len * HKV * D * 2
    keys = num_requests * (
        q_len * seq_len if q_len == 1 else sum(seq_len - q_len + t + 1 for t in range(q_len))
    )
    flops = 4 * HQ * D * keys
    return {
        "case": name,
        "requests": num_requests,
        "q_len": q_len,
        "seq_len": seq_len,
        "rsllm_ms": ms,
        "torch_sdpa_contiguous_ms": sdpa_ms(num_requests, q_len, seq_len),
        "kv_read_bytes_per_s": kv_bytes / (ms / 1e3),
        "flops_per_s": flops / (ms / 1e3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = [
        attention_case("decode b1 ctx8192 (split-K)", 1, 1, 8192),
        attention_case("decode b64 ctx2048", 64, 1, 2048),
        attention_case("decode b256 ctx768", 256, 1, 768),
        attention_case("prefill 8x512", 8, 512, 512),
    ]
    x = torch.randn((256, 4096), dtype=DT, device="cuda")
    res = torch.randn_like(x)
    w = torch.randn(4096, dtype=DT, device="cuda")

    def eager_add_norm() -> torch.Tensor:
        s = x + res
        sf = s.float()
        return w * (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(DT)

    results.append(
        {
            "case": "fused_add_rms_norm 256x4096",
            "rsllm_ms": do_bench(lambda: fused_add_rms_norm(x, res, w, 1e-5)),
            "torch_eager_ms": do_bench(eager_add_norm),
        }
    )
    gu = torch.randn((256, 2 * 14336), dtype=DT, device="cuda")
    results.append(
        {
            "case": "silu_and_mul 256x14336",
            "rsllm_ms": do_bench(lambda: silu_and_mul(gu)),
            "torch_eager_ms": do_bench(lambda: F.silu(gu[:, :14336]) * gu[:, 14336:]),
        }
    )
    print(json.dumps(results, indent=2))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
