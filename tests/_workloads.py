"""Workloads shared by the engine's equivalence tests (plain and overlapped loops)."""

from __future__ import annotations

import random

# Bytes of one 16-token KV block of the tiny test Llama: 2 (K,V) x 16 x 2 heads x 16 dims
# x 2 layers x 4 bytes.
TINY_BLOCK_BYTES = 2 * 16 * 2 * 16 * 2 * 4


def equivalence_prompts() -> list[dict[str, list[int]]]:
    """Six token-id prompts of 5-160 tokens; half share a 40-token prefix, so that
    prefix caching has hits."""
    rng = random.Random(7)
    shared = [rng.randrange(3, 49152) for _ in range(40)]
    prompts = []
    for n in (5, 17, 33, 64, 90, 120):
        own = [rng.randrange(3, 49152) for _ in range(n)]
        prompts.append({"prompt_token_ids": (shared + own) if n % 2 == 0 else own})
    return prompts
