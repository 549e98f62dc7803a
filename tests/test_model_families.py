"""Tiny random models of each family equal transformers' logits through the paged cache:
one prefill batch, a chunked prefill beside decodes, and step-by-step decode, with every
request's blocks scattered in the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _models import PagedDriver, hf_model, tiny_hf_config
from rsllm.model.registry import build_model

FAMILIES = ["llama", "llama3", "mistral", "qwen2", "qwen3"]
BLOCK = 4
TOL = {torch.float32: 2e-4, torch.bfloat16: 6e-2}


class Harness:
    def __init__(self, family: str, dtype: torch.dtype, backend: str = "torch") -> None:
        cfg = tiny_hf_config(family)
        self.hf = hf_model(cfg)
        self.model = build_model(cfg, self.hf.state_dict(), dtype, "cpu", attention_backend=backend)
        a = self.model.config
        self.backend = self.model.model.layers[0].self_attn.backend
        k_shape, v_shape = self.backend.layout.shapes(64, BLOCK, a.num_key_value_heads, a.head_dim)
        self.kv = [
            (torch.zeros(k_shape, dtype=dtype), torch.zeros(v_shape, dtype=dtype))
            for _ in range(a.num_hidden_layers)
        ]
        self.driver = PagedDriver(64, BLOCK, seed=hash(family) % 1000)
        self.tol = TOL[dtype]
        self.rng = np.random.default_rng(0)

    def prompt(self, n: int) -> list[int]:
        return self.rng.integers(0, self.model.config.vocab_size, n).tolist()

    @torch.inference_mode()
    def run(self, batch) -> torch.Tensor:
        meta = self.backend.build_metadata(
            batch.slot_mapping,
            batch.query_start_loc,
            batch.seq_lens,
            batch.block_tables,
            BLOCK,
            torch.device("cpu"),
        )
        hidden = self.model(
            torch.from_numpy(batch.input_ids), torch.from_numpy(batch.positions), self.kv, meta
        )
        return self.model.compute_logits(hidden)  # [T, V]

    @torch.inference_mode()
    def check(self, batch, logits: torch.Tensor) -> None:
        """Every row's logits equal HF's on the full sequence at that position."""
        for r, req in enumerate(batch.req_ids):
            lo, hi = batch.query_start_loc[r], batch.query_start_loc[r + 1]
            tokens = self.driver.seqs[req].tokens[: batch.seq_lens[r]]
            ref = self.hf(torch.tensor([tokens])).logits[0, -(hi - lo) :]
            torch.testing.assert_close(logits[lo:hi], ref, atol=self.tol, rtol=self.tol)


# "torch": the pure reference; "cpu": decodes in the Rust kernel (the default on CPUs).
@pytest.fixture(params=[(f, b) for f in FAMILIES for b in ("torch", "cpu")], ids=str)
def harness(request) -> Harness:
    family, backend = request.param
    return Harness(family, torch.float32, backend)


def test_prefill_batch(harness: Harness) -> None:
    for i, n in enumerate([21, 5, 37, 2]):
        harness.driver.add(f"r{i}", harness.prompt(n))
    batch = harness.driver.batch()
    harness.check(batch, harness.run(batch))


def test_chunked_prefill_beside_decodes(harness: Harness) -> None:
    d = harness.driver
    d.add("long", harness.prompt(30))
    d.add("short", harness.prompt(6))
    first = d.batch({"long": 7, "short": 6})  # chunk 1 of long; short fully prefilled
    harness.check(first, harness.run(first))
    for chunk in (9, 1, 13):  # the 1-token chunk is a prefill row that looks like a decode
        logits = None
        d.append(["short"], np.array([harness.rng.integers(0, 97)]))
        batch = d.batch({"long": chunk, "short": 1})
        logits = harness.run(batch)
        harness.check(batch, logits)


def test_step_by_step_decode(harness: Harness) -> None:
    d = harness.driver
    for i, n in enumerate([3, 17, 9]):
        d.add(f"r{i}", harness.prompt(n))
    batch = d.batch()
    logits = harness.run(batch)
    for _ in range(12):  # crosses several block boundaries
        sampled = logits[torch.from_numpy(batch.logits_indices.astype(np.int64))].argmax(-1)
        d.append(batch.req_ids, sampled.numpy())
        batch = d.batch()
        logits = harness.run(batch)
        harness.check(batch, logits)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
@torch.inference_mode()
def test_bfloat16_error_is_that_of_transformers_bfloat16(family: str, backend: str) -> None:
    """In bf16 our distance to the fp32 reference is within 1.5x (+0.02) of the distance
    of transformers' own bf16 forward to it (on `cpu`: the Rust norm, rope and store)."""
    h = Harness(family, torch.bfloat16, backend)
    hf16 = hf_model(tiny_hf_config(family)).to(torch.bfloat16)
    for i, n in enumerate([19, 4]):
        h.driver.add(f"r{i}", h.prompt(n))
    batch = h.driver.batch()
    h.run(batch)
    h.driver.append(batch.req_ids, np.array([1, 2]))
    batch = h.driver.batch()
    logits = h.run(batch)
    for r, req in enumerate(batch.req_ids):
        ids = torch.tensor([h.driver.seqs[req].tokens])
        ref = h.hf(ids).logits[0, -1]
        ours_err = (logits[r] - ref).abs().max().item()
        hf_err = (hf16(ids).logits[0, -1].float() - ref).abs().max().item()
        assert ours_err <= 1.5 * hf_err + 0.02, (ours_err, hf_err)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@torch.inference_mode()
def test_single_stream_bfloat16_decode_equals_the_torch_backend(family: str) -> None:
    """One request decoding token by token in bf16: the cpu backend's one-row path (Rust
    matmul, norm and rope with their reused output buffers) agrees with the torch
    reference at every step, so no buffer is read after the next step overwrote it."""
    runs = [Harness(family, torch.bfloat16, b) for b in ("cpu", "torch")]
    for h in runs:
        h.driver.add("r", h.prompt(7))
    batches = [h.driver.batch() for h in runs]
    logits = [h.run(b) for h, b in zip(runs, batches, strict=True)]
    for step in range(10):
        token = int(logits[1][-1].argmax())
        for h, b in zip(runs, batches, strict=True):
            h.driver.append(b.req_ids, np.array([token]))
        batches = [h.driver.batch() for h in runs]
        assert batches[0].input_ids.shape == (1,)  # the one-row path
        logits = [h.run(b) for h, b in zip(runs, batches, strict=True)]
        # bf16 through both: the same tolerance as against transformers' bf16 above.
        err = (logits[0] - logits[1]).abs().max().item()
        assert err <= 0.1 * logits[1].abs().max().item() + 0.02, (step, err)
