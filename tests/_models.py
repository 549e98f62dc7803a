"""Test helpers for the model tests: tiny HF configs, and a small paged-cache driver
that plays the scheduler's part (hand-made batches, blocks scattered in the cache)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Batch:
    input_ids: np.ndarray
    positions: np.ndarray
    slot_mapping: np.ndarray
    query_start_loc: np.ndarray
    seq_lens: np.ndarray
    block_tables: np.ndarray
    logits_indices: np.ndarray
    req_ids: list[str]
    sampling_mask: np.ndarray
    num_computed_tokens: np.ndarray


@dataclass
class _Seq:
    tokens: list[int]
    num_prompt: int
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)


class PagedDriver:
    """Allocates blocks from a shuffled free list (so a request's blocks are scattered and
    never adjacent in order) and builds the step arrays of DESIGN.md."""

    def __init__(self, num_blocks: int, block_size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.free = [int(b) for b in rng.permutation(np.arange(1, num_blocks))]
        self.block_size = block_size
        self.seqs: dict[str, _Seq] = {}

    def add(self, req_id: str, prompt: list[int]) -> None:
        self.seqs[req_id] = _Seq(tokens=list(prompt), num_prompt=len(prompt))

    def free_request(self, req_id: str) -> None:
        self.free.extend(self.seqs.pop(req_id).blocks)

    def batch(self, num_tokens: dict[str, int] | None = None) -> Batch:
        """Schedule `num_tokens[req]` new tokens per request (default: all not yet computed)."""
        bs = self.block_size
        plan = num_tokens or {r: len(s.tokens) - s.num_computed for r, s in self.seqs.items()}
        ids, pos, slots, qsl, seq_lens, tables, logits_idx, mask, computed = (
            [],
            [],
            [],
            [0],
            [],
            [],
            [],
            [],
            [],
        )
        for req_id, n in plan.items():
            s = self.seqs[req_id]
            start, end = s.num_computed, s.num_computed + n
            assert 0 < n and end <= len(s.tokens)
            while len(s.blocks) * bs < end:
                s.blocks.append(self.free.pop())
            p = np.arange(start, end)
            ids += s.tokens[start:end]
            pos += p.tolist()
            slots += (np.asarray(s.blocks)[p // bs] * bs + p % bs).tolist()
            qsl.append(qsl[-1] + n)
            seq_lens.append(end)
            tables.append(s.blocks)
            computed.append(start)
            samples = end == len(s.tokens)
            mask.append(samples)
            if samples:
                logits_idx.append(qsl[-1] - 1)
            s.num_computed = end
        width = max(len(t) for t in tables)
        bt = np.zeros((len(tables), width), dtype=np.int32)
        for i, t in enumerate(tables):
            bt[i, : len(t)] = t
        return Batch(
            input_ids=np.array(ids, dtype=np.int32),
            positions=np.array(pos, dtype=np.int32),
            slot_mapping=np.array(slots, dtype=np.int64),
            query_start_loc=np.array(qsl, dtype=np.int32),
            seq_lens=np.array(seq_lens, dtype=np.int32),
            block_tables=bt,
            logits_indices=np.array(logits_idx, dtype=np.int32),
            req_ids=list(plan),
            sampling_mask=np.array(mask, dtype=np.bool_),
            num_computed_tokens=np.array(computed, dtype=np.int32),
        )

    def append(self, req_ids: list[str], tokens: np.ndarray) -> None:
        for r, t in zip(req_ids, tokens.tolist(), strict=True):
            self.seqs[r].tokens.append(int(t))


def tiny_hf_config(family: str) -> dict:
    """A tiny transformers config of `family` as a dict (architectures set)."""
    import transformers

    common = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        initializer_range=0.15,  # large enough that attention is far from uniform
    )
    if family == "llama":
        cfg = transformers.LlamaConfig(**common, tie_word_embeddings=True)
    elif family == "llama3":
        cfg = transformers.LlamaConfig(
            **{**common, "max_position_embeddings": 512},
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
    elif family == "mistral":
        cfg = transformers.MistralConfig(**common, sliding_window=None)
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(**common, tie_word_embeddings=False)
    elif family == "qwen3":
        cfg = transformers.Qwen3Config(**common, head_dim=32)
    else:
        raise ValueError(family)
    d = cfg.to_dict()
    d["architectures"] = [type(cfg).__name__.replace("Config", "ForCausalLM")]
    return d


def hf_model(hf_config: dict, dtype: torch.dtype = torch.float32, seed: int = 0):
    import transformers

    cls = getattr(transformers, hf_config["architectures"][0])
    cfg_cls = getattr(transformers, hf_config["architectures"][0].replace("ForCausalLM", "Config"))
    cfg = cfg_cls.from_dict(hf_config)
    torch.manual_seed(seed)
    model = cls(cfg).to(dtype).eval()
    with torch.no_grad():  # HF inits biases and norms to constants; make them random too
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model
