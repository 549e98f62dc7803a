"""Benchmark prompt sets: random token ids with a fixed seed, and the conversation-like
set kept in benches/datasets/ (no download). One `BenchRequest` per prompt."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONVERSATIONS = Path(__file__).resolve().parents[1] / "datasets" / "conversations.jsonl"
# Random prompts avoid the low ids, where tokenizers keep their special tokens.
FIRST_ORDINARY_ID = 100


@dataclass
class BenchRequest:
    """One prompt: token ids (what offline engines and /v1/completions take), or chat
    messages for /v1/chat/completions, and the number of tokens to generate."""

    prompt_token_ids: list[int]
    output_len: int
    messages: list[dict[str, str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def random_requests(
    num: int,
    input_len: tuple[int, int],
    output_len: int,
    vocab_size: int,
    seed: int = 0,
) -> list[BenchRequest]:
    """`num` prompts of uniformly random length in [lo, hi] of uniformly random ordinary
    token ids; the same seed gives the same prompts."""
    lo, hi = input_len
    if not 1 <= lo <= hi:
        raise ValueError(f"input length range must satisfy 1 <= lo <= hi, got {input_len}")
    if output_len < 1:
        raise ValueError(f"output_len must be positive, got {output_len}")
    rng = random.Random(seed)
    top = vocab_size - 1
    return [
        BenchRequest(
            [rng.randint(FIRST_ORDINARY_ID, top) for _ in range(rng.randint(lo, hi))],
            output_len,
        )
        for _ in range(num)
    ]


def load_conversations(path: Path = CONVERSATIONS) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def conversation_requests(
    num: int,
    render: Callable[[Sequence[Mapping[str, str]]], list[int]],
    output_len: int | None = None,
    path: Path = CONVERSATIONS,
    start: int = 0,
) -> list[BenchRequest]:
    """`num` conversations from the `start`-th on (cycling through the set), each
    rendered to token ids by `render` (the chat template, then the tokenizer).
    `output_len` fixes every reply's length; None keeps each conversation's own."""
    rows = load_conversations(path)
    if not rows:
        raise ValueError(f"no conversations in {path}")
    out = []
    for i in range(num):
        row = rows[(start + i) % len(rows)]
        out.append(
            BenchRequest(
                render(row["messages"]),
                output_len if output_len is not None else int(row["output_len"]),
                messages=row["messages"],
            )
        )
    return out
