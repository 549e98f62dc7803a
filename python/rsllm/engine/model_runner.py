"""The model runner: owns the model and the paged KV cache, and runs one step's batch.

`execute_model(batch)` takes the flat batch arrays of DESIGN.md, runs the forward pass
(K/V of every token stored before each layer's attention), samples one token for each
request that samples this step, and appends it to that request's history itself.

KV cache sizing (`num_blocks`): `num_blocks` if given; else `kv_cache_memory_bytes`; else
on a CPU min(4 GiB, 20% of the available RAM), on a GPU `gpu_memory_utilization` of its
memory minus what is in use after loading the model. Block 0 is the null block.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from rsllm.engine.sampling_state import RequestState, build_sampling_tensors, check_params
from rsllm.errors import InvalidRequestError, UnknownRequestError
from rsllm.model import cpu_ops
from rsllm.model.arch_config import ArchConfig
from rsllm.model.registry import build_model
from rsllm.model.sampler import SamplerOutput, SamplingTensors, apply_token_bitmask, sample
from rsllm.sampling_params import SamplingParams

# The default KV cache on a CPU: the smaller of 2 GiB and 10% of the free RAM, and
# never more than `max_num_seqs` full-length sequences need (a tiny model would
# otherwise zero-fill gigabytes it can never use).
CPU_KV_CACHE_MAX_BYTES = 2 << 30
CPU_KV_CACHE_RAM_SHARE = 0.1


class StepBatch(Protocol):
    """The attributes `execute_model` reads (the core's batch object has them)."""

    input_ids: np.ndarray  # int32 [T]
    positions: np.ndarray  # int32 [T]
    slot_mapping: np.ndarray  # int64 [T]
    query_start_loc: np.ndarray  # int32 [R+1]
    seq_lens: np.ndarray  # int32 [R]
    block_tables: np.ndarray  # int32 [R, B]
    logits_indices: np.ndarray  # int32 [S]
    req_ids: list[str]
    sampling_mask: np.ndarray  # bool [R]
    num_computed_tokens: np.ndarray  # int32 [R]


@dataclass
class LogprobsLists:
    """Sample logprobs of the S rows: column 0 is the sampled token, then the top-n
    (n = the largest `logprobs` asked this step; row i uses its first 1 + logprobs_i)."""

    token_ids: np.ndarray  # int32 [S, 1 + n]
    logprobs: np.ndarray  # float32 [S, 1 + n]
    ranks: np.ndarray  # int32 [S], 1-based rank of the sampled token


@dataclass
class PromptLogprobs:
    """Prompt logprobs computed this step for one request: entry j is about prompt token
    `start + j` (>= 1) given the tokens before it; column 0 is that prompt token."""

    start: int
    token_ids: np.ndarray  # int32 [n, 1 + k]
    logprobs: np.ndarray  # float32 [n, 1 + k]
    ranks: np.ndarray  # int32 [n]


@dataclass
class ModelRunnerOutput:
    req_ids: list[str]  # the S sampling requests, batch order
    sampled_token_ids: np.ndarray  # int32 [S]
    logprobs: LogprobsLists | None = None  # when any sampling request asked for logprobs
    num_logprobs: list[int | None] = field(default_factory=list)  # per row: asked or None
    prompt_logprobs: dict[str, PromptLogprobs] = field(default_factory=dict)


def _keep_freed_memory() -> None:
    """glibc returns large freed blocks to the OS and page-faults them back on the next
    step; every decode step allocates the same few MB, so keep them (measured: the
    per-layer attention time varies 3x without this). No-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: serve <= 32 MiB from the heap
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD: keep up to 512 MiB of free heap
        libc.mallopt(-2, 256 << 20)  # M_TOP_PAD: grow the heap in 256 MiB steps
    except (OSError, AttributeError):
        pass


def _plain_greedy(st: SamplingTensors) -> bool:
    """Every row greedy, with nothing that changes the logits or reads them back."""
    return (
        st.all_greedy
        and st.penalties is None
        and st.bias is None
        and st.allowed is None
        and st.banned is None
        and st.max_num_logprobs is None
    )


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


class ModelRunner:
    """Model + KV cache + per-request sampling state. Not thread-safe: one engine loop."""

    def __init__(
        self,
        hf_config: dict[str, Any],
        state_dict: dict[str, torch.Tensor] | None,
        *,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        block_size: int = 16,
        num_blocks: int | None = None,
        num_gpu_blocks: int | None = None,
        kv_cache_memory_bytes: int | None = None,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        seed: int = 0,
        attention_backend: str = "auto",
    ) -> None:
        if block_size <= 0 or max_model_len <= 0 or max_num_seqs <= 0:
            raise InvalidRequestError("block_size, max_model_len and max_num_seqs must be > 0")
        self.device = torch.device(device)
        if self.device.type == "cpu":
            _keep_freed_memory()
        self.dtype = dtype
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.arch = ArchConfig.from_hf(hf_config)
        self.model = build_model(
            hf_config,
            state_dict,
            dtype,
            self.device,
            max_model_len=max_model_len,
            attention_backend=attention_backend,
            seed=seed,
        )
        self.backend = self.model.model.layers[0].self_attn.backend
        self.vocab_size = self.arch.vocab_size
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.requests: dict[str, RequestState] = {}
        self.num_blocks = self._num_blocks(
            num_blocks or num_gpu_blocks, kv_cache_memory_bytes, gpu_memory_utilization
        )
        a = self.arch
        k_shape, v_shape = self.backend.layout.shapes(
            self.num_blocks, block_size, a.num_key_value_heads, a.head_dim
        )
        # Zeroed, not empty: masked-out slots still meet V in the attention matmul.
        self.kv_caches = [
            (
                torch.zeros(k_shape, dtype=dtype, device=self.device),
                torch.zeros(v_shape, dtype=dtype, device=self.device),
            )
            for _ in range(a.num_hidden_layers)
        ]

    # -- KV cache -------------------------------------------------------------------------
    @property
    def block_bytes(self) -> int:
        """Bytes of one block across all layers (K and V)."""
        a = self.arch
        per_layer = 2 * self.block_size * a.num_key_value_heads * a.head_dim
        return per_layer * a.num_hidden_layers * torch.tensor([], dtype=self.dtype).element_size()

    def _num_blocks(self, given: int | None, memory: int | None, gpu_util: float) -> int:
        if given is not None:
            n = int(given)
        else:
            if memory is None:
                if self.device.type == "cuda":
                    free, total = torch.cuda.mem_get_info(self.device)
                    memory = int(total * gpu_util) - (total - free)
                else:
                    memory = min(
                        CPU_KV_CACHE_MAX_BYTES, int(_available_ram() * CPU_KV_CACHE_RAM_SHARE)
                    )
                    needed = self.max_num_seqs * -(-self.max_model_len // self.block_size) + 1
                    memory = min(memory, needed * self.block_bytes)
            n = int(memory) // self.block_bytes
        if n < 2:
            raise InvalidRequestError(
                f"KV cache too small: {n} blocks of {self.block_bytes} bytes (need >= 2 incl. the "
                "null block); raise kv_cache_memory_bytes"
            )
        return n

    # -- requests -------------------------------------------------------------------------
    def add_request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Start tracking a request's sampling state (output history, seed position)."""
        if req_id in self.requests:
            raise InvalidRequestError(f"request {req_id!r} is already in the model runner")
        check_params(params, self.vocab_size)
        stop_ids = set(params.all_stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= set(self.arch.eos_token_ids)
        self.requests[req_id] = RequestState(
            prompt_token_ids=list(prompt_token_ids),
            params=params,
            stop_ids=tuple(sorted(stop_ids)),
        )

    def remove_request(self, req_id: str) -> None:
        """Forget a finished or aborted request (not on preemption)."""
        if self.requests.pop(req_id, None) is None:
            raise UnknownRequestError(f"request {req_id!r} is not in the model runner")

    # -- one step -------------------------------------------------------------------------
    @torch.inference_mode()
    def execute_model(
        self, batch: StepBatch, grammar_bitmask: torch.Tensor | None = None
    ) -> ModelRunnerOutput:
        """Run one step. `grammar_bitmask` (bool [S, V] or xgrammar's int32 [S, ceil(V/32)])
        masks the S sampling rows before sampling (structured outputs)."""
        dev = self.device
        try:
            states = [self.requests[r] for r in batch.req_ids]
        except KeyError as exc:
            raise UnknownRequestError(
                f"request {exc.args[0]!r} is not in the model runner"
            ) from None
        meta = self.backend.build_metadata(
            batch.slot_mapping,
            batch.query_start_loc,
            batch.seq_lens,
            batch.block_tables,
            self.block_size,
            dev,
        )
        input_ids = torch.from_numpy(self._fill_placeholders(batch, states)).to(dev)
        positions = torch.from_numpy(np.asarray(batch.positions)).to(dev)
        hidden = self.model(input_ids, positions, self.kv_caches, meta)  # [T, H]

        mask = np.asarray(batch.sampling_mask, dtype=np.bool_)
        sampling_ids = [r for r, m in zip(batch.req_ids, mask, strict=True) if m]
        sampling_states = [st for st, m in zip(states, mask, strict=True) if m]
        logits_indices = torch.from_numpy(np.asarray(batch.logits_indices, dtype=np.int64))
        if len(sampling_ids) != len(logits_indices):
            raise InvalidRequestError("sampling_mask and logits_indices disagree on S")
        out = ModelRunnerOutput(
            req_ids=sampling_ids,
            sampled_token_ids=np.zeros(0, dtype=np.int32),
            num_logprobs=[st.params.logprobs for st in sampling_states],
        )
        out.prompt_logprobs = self._prompt_logprobs(batch, states, hidden)
        if not sampling_ids:
            return out
        rows = hidden[logits_indices.to(dev)]
        st = build_sampling_tensors(sampling_states, self.model.lm_head.weight.shape[0], dev)
        if grammar_bitmask is None and _plain_greedy(st) and rows.device.type == "cpu":
            # Nothing but the argmax: straight from the model-dtype logits.
            raw = self.model.compute_raw_logits(rows)
            result = SamplerOutput(sampled=cpu_ops.argmax_rows(raw), logprobs=None)
        else:
            logits = self.model.compute_logits(rows)  # [S, V] fp32
            if grammar_bitmask is not None:
                apply_token_bitmask(logits, grammar_bitmask)
            result = sample(logits, st, self.generator)
        sampled = result.sampled.to(torch.int32).cpu().numpy()
        for state, tok in zip(sampling_states, sampled.tolist(), strict=True):
            state.output_token_ids.append(tok)
        out.sampled_token_ids = sampled
        if result.logprobs is not None:
            lp = result.logprobs
            out.logprobs = LogprobsLists(
                token_ids=lp.token_ids.to(torch.int32).cpu().numpy(),
                logprobs=lp.logprobs.cpu().numpy(),
                ranks=lp.ranks.to(torch.int32).cpu().numpy(),
            )
        return out

    @staticmethod
    def _fill_placeholders(batch: StepBatch, states: list[RequestState]) -> np.ndarray:
        """Input ids with each -1 (async scheduling: a token sampled by the previous step,
        unknown to the core when it scheduled this one) replaced by that sample, the
        last token of the request's history here."""
        ids = np.asarray(batch.input_ids)
        rows = np.flatnonzero(ids < 0)
        if len(rows) == 0:
            return ids
        ids = ids.copy()
        reqs = np.searchsorted(np.asarray(batch.query_start_loc), rows, side="right") - 1
        for row, r in zip(rows.tolist(), reqs.tolist(), strict=True):
            history = states[r].output_token_ids
            if not history:
                raise InvalidRequestError(f"request {batch.req_ids[r]!r} has no sampled token")
            ids[row] = history[-1]
        return ids

    def _prompt_logprobs(
        self, batch: StepBatch, states: list[RequestState], hidden: torch.Tensor
    ) -> dict[str, PromptLogprobs]:
        """Logprobs of the prompt tokens whose predecessors were computed this step."""
        res: dict[str, PromptLogprobs] = {}
        qsl = np.asarray(batch.query_start_loc)
        computed = np.asarray(batch.num_computed_tokens)
        for r, (req_id, st) in enumerate(zip(batch.req_ids, states, strict=True)):
            k = st.params.prompt_logprobs
            prompt = st.prompt_token_ids
            start_pos = int(computed[r])
            # row i (position start_pos + i) predicts prompt token start_pos + i + 1
            n = min(int(qsl[r + 1] - qsl[r]), len(prompt) - 1 - start_pos)
            if k is None or n <= 0:
                continue
            rows = hidden[int(qsl[r]) : int(qsl[r]) + n]
            lp = self.model.compute_logits(rows).log_softmax(dim=-1)  # [n, V]
            target = torch.tensor(prompt[start_pos + 1 : start_pos + 1 + n], device=lp.device)
            tgt_lp = lp.gather(1, target[:, None])
            ranks = (lp > tgt_lp).sum(dim=-1) + 1
            ids, vals = target[:, None], tgt_lp
            if k > 0:
                top = lp.topk(k, dim=-1)
                ids = torch.cat([ids, top.indices], dim=1)
                vals = torch.cat([vals, top.values], dim=1)
            res[req_id] = PromptLogprobs(
                start=start_pos + 1,
                token_ids=ids.to(torch.int32).cpu().numpy(),
                logprobs=vals.cpu().numpy(),
                ranks=ranks.to(torch.int32).cpu().numpy(),
            )
        return res
