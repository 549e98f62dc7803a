"""`LLMEngine`: the synchronous engine. One `step` = schedule -> forward + sample -> update.

The Rust core (`rsllm._core.EngineCore`) owns the queues, the KV block table and the
detokenizer; the model runner owns the weights, the KV cache and the sampling state.
This class only wires them and turns the core's per-token results into vLLM's
`RequestOutput`s (cumulative, delta or final-only, per request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rsllm import _core
from rsllm.config import ModelConfig, resolve_dtype
from rsllm.engine.arg_utils import EngineArgs
from rsllm.engine.model_runner import ModelRunner, ModelRunnerOutput
from rsllm.errors import InvalidRequestError, UnknownRequestError
from rsllm.model.loader import LoadedModel, load_model
from rsllm.outputs import CompletionOutput, Logprob, RequestOutput
from rsllm.sampling_params import RequestOutputKind, SamplingParams
from rsllm.structured_outputs.manager import StructuredOutputManager
from rsllm.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

# Generation-config keys that become default sampling parameters (vLLM's "auto" mode).
_GENERATION_DEFAULTS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


@dataclass
class _Child:
    """One of the n completions of a request; `core_id` is its id in the core."""

    index: int
    core_id: str
    params: SamplingParams
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # How much of text / token_ids / logprobs the consumer has already been given.
    sent_text: int = 0
    sent_tokens: int = 0
    sent_logprobs: int = 0
    finish_sent: bool = False


@dataclass
class _Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[_Child]
    arrival_time: float
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.children)


@dataclass
class EngineStats:
    """Counters since start, for logs and `/metrics`."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished_by_reason: dict[str, int] = field(default_factory=dict)
    num_steps: int = 0


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _eos_token_ids(loaded: LoadedModel, tokenizer: Tokenizer | None) -> list[int]:
    ids: set[int] = set()
    for source in (loaded.generation_config, loaded.hf_config):
        value = source.get("eos_token_id")
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    if not ids and tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


class LLMEngine:
    """The engine behind `LLM` (offline) and `AsyncLLM` (serving). Not thread-safe:
    exactly one thread calls it."""

    def __init__(self, args: EngineArgs) -> None:
        self.args = args
        self.model_config = ModelConfig(
            model=args.model,
            tokenizer=args.tokenizer,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            load_format=args.load_format,
            seed=args.seed,
            revision=args.revision,
            skip_tokenizer_init=args.skip_tokenizer_init,
            generation_config=args.generation_config,
            override_generation_config=dict(args.override_generation_config or {}),
        )
        self.device = _device()
        started = time.perf_counter()
        loaded = load_model(
            args.model,
            load_format=args.load_format,
            tokenizer=args.tokenizer,
            revision=args.revision,
            skip_tokenizer_init=args.skip_tokenizer_init,
        )
        self.loaded = loaded
        self.served_model_name = (args.served_model_name or [loaded.served_model_name])[0]
        self.max_model_len = self.model_config.get_max_model_len(loaded.hf_config)
        # The plain rule (bf16 where the hardware is fast at it): a GGUF's "float32" is
        # only the dequantized format, not a precision the weights need.
        self.dtype = resolve_dtype(args.dtype, self.device)
        self.tokenizer: Tokenizer | None = None
        if loaded.tokenizer_path is not None:
            self.tokenizer = Tokenizer.from_file(
                loaded.tokenizer_path, loaded.special_tokens, loaded.chat_template
            )
        self.eos_token_ids = _eos_token_ids(loaded, self.tokenizer)
        self.default_sampling_params = self._generation_defaults(loaded)

        chunked = args.enable_chunked_prefill
        budget = args.max_num_batched_tokens
        if budget is None:
            # CPUs: smaller steps measured faster (benches/throughput.py, issue 6's
            # workload: 600 output tok/s at 512 tokens a step, 547 at 2048, 459 at 4096),
            # so long prompts go in 512-token chunks beside the decodes.
            chunk = 512 if self.device.type == "cpu" else 2048
            budget = chunk if chunked else max(chunk, self.max_model_len)
        self.max_num_batched_tokens = budget
        self.runner = ModelRunner(
            loaded.hf_config,
            loaded.state_dict or None,
            dtype=self.dtype,
            device=self.device,
            block_size=args.block_size,
            kv_cache_memory_bytes=args.kv_cache_memory_bytes,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=budget,
            seed=args.seed,
        )
        # The weights now live in the model; drop the loader's copies.
        loaded.state_dict.clear()
        self.core = _core.EngineCore(
            num_blocks=self.runner.num_blocks,
            block_size=args.block_size,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=budget,
            max_model_len=self.max_model_len,
            enable_prefix_caching=args.enable_prefix_caching,
            enable_chunked_prefill=chunked,
            policy=args.scheduling_policy,
            tokenizer=self.tokenizer.core if self.tokenizer is not None else None,
            async_scheduling=args.async_scheduling,
        )
        self.async_scheduling = args.async_scheduling
        # Overlapped loop: the executed step whose samples the core has not seen yet.
        self._in_flight: ModelRunnerOutput | None = None
        self.requests: dict[str, _Request] = {}
        self._children: dict[str, tuple[_Request, _Child]] = {}
        self.structured = StructuredOutputManager(self._grammar_backend)
        self._token_text: dict[int, str] = {}
        self.stats = EngineStats()
        logger.info(
            "loaded %s (%s, %s) in %.1f s: %d KV blocks of %d tokens, max_model_len %d",
            self.served_model_name,
            self.dtype,
            self.device,
            time.perf_counter() - started,
            self.runner.num_blocks,
            args.block_size,
            self.max_model_len,
        )

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> LLMEngine:
        return cls(args)

    # -- configuration ------------------------------------------------------------------
    def _generation_defaults(self, loaded: LoadedModel) -> dict[str, Any]:
        mode = self.model_config.generation_config
        source: dict[str, Any] = {}
        if mode == "auto":
            source = dict(loaded.generation_config)
        elif mode != "vllm":
            from rsllm.model.hf_loader import read_generation_config

            source = read_generation_config(mode)
        source.update(self.model_config.override_generation_config)
        return {
            ours: source[theirs]
            for theirs, ours in _GENERATION_DEFAULTS.items()
            if source.get(theirs) is not None
        }

    def _grammar_backend(self) -> Any:
        from rsllm.structured_outputs.backend import GrammarBackend

        if self.tokenizer is None or self.loaded.tokenizer_path is None:
            raise InvalidRequestError("structured outputs need a tokenizer")
        return GrammarBackend(
            self.tokenizer, self.loaded.tokenizer_path, self.runner.vocab_size, self.eos_token_ids
        )

    # -- requests -----------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt: str | dict[str, Any] | Sequence[int],
        params: SamplingParams | None = None,
        *,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> None:
        """Queue a request. `prompt` is a string, `{"prompt": str}` or
        `{"prompt_token_ids": [...]}` (vLLM's forms). Invalid input raises
        `InvalidRequestError` and leaves the engine as it was."""
        if not isinstance(request_id, str) or not request_id:
            raise InvalidRequestError("request_id must be a non-empty string")
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(
                f"sampling params must be SamplingParams, got {type(params).__name__}"
            )
        text, prompt_ids = self._prompt_ids(prompt)
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty")
        if len(prompt_ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"the prompt is {len(prompt_ids)} tokens long, but the model's context "
                f"length is {self.max_model_len} tokens (max_model_len)"
            )
        if self.tokenizer is None and params.stop:
            raise InvalidRequestError("stop strings need a tokenizer (skip_tokenizer_init is set)")
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = self.max_model_len - len(prompt_ids)
        base = params.clone(_eos_token_ids=list(self.eos_token_ids))
        # Compiled before anything is queued: an invalid schema leaves no trace.
        if params.structured_outputs is not None and self.async_scheduling:
            # The grammar mask of step N+1 would need step N's token before it is known.
            raise InvalidRequestError("structured outputs are not supported with async_scheduling")
        grammar = (
            self.structured.compile(params.structured_outputs)
            if params.structured_outputs is not None
            else None
        )
        req = _Request(
            request_id=request_id,
            prompt=text,
            prompt_token_ids=prompt_ids,
            params=params,
            children=[],
            arrival_time=arrival_time if arrival_time is not None else time.time(),
        )
        added: list[str] = []
        try:
            for i in range(params.n):
                core_id = request_id if params.n == 1 else f"{i}_{request_id}"
                seed = None if base.seed is None else base.seed + i
                child_params = base.clone(n=1, seed=seed, max_tokens=max_tokens)
                self.runner.add_request(core_id, prompt_ids, child_params)
                added.append(core_id)
                self.core.add_request(
                    core_id,
                    prompt_ids,
                    max_tokens=max_tokens,
                    min_tokens=params.min_tokens,
                    eos_token_ids=self.eos_token_ids,
                    stop_token_ids=params.stop_token_ids or [],
                    ignore_eos=params.ignore_eos,
                    priority=priority,
                    stop=params.stop or [],
                    include_stop_str_in_output=params.include_stop_str_in_output,
                    skip_special_tokens=params.skip_special_tokens,
                    spaces_between_special_tokens=params.spaces_between_special_tokens,
                    detokenize=params.detokenize and self.tokenizer is not None,
                )
                if grammar is not None:
                    self.structured.add_request(core_id, grammar)
                child = _Child(index=i, core_id=core_id, params=child_params)
                if params.logprobs is not None:
                    child.logprobs = []
                    child.cumulative_logprob = 0.0
                req.children.append(child)
        except BaseException:
            for core_id in added:
                self._forget_child(core_id)
            raise
        if params.prompt_logprobs is not None:
            req.prompt_logprobs = [None] * len(prompt_ids)
        self.requests[request_id] = req
        for child in req.children:
            self._children[child.core_id] = (req, child)
        self.stats.prompt_tokens += len(prompt_ids)

    def _prompt_ids(
        self, prompt: str | dict[str, Any] | Sequence[int]
    ) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self._encode(prompt)
        if isinstance(prompt, dict):
            if prompt.get("prompt_token_ids") is not None:
                ids = prompt["prompt_token_ids"]
                return prompt.get("prompt"), self._check_ids(ids)
            if isinstance(prompt.get("prompt"), str):
                return prompt["prompt"], self._encode(prompt["prompt"])
            raise InvalidRequestError("a prompt dict needs 'prompt' (str) or 'prompt_token_ids'")
        if isinstance(prompt, Sequence):
            return None, self._check_ids(prompt)
        raise InvalidRequestError(f"unsupported prompt type {type(prompt).__name__}")

    def _encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise InvalidRequestError(
                "text prompts need a tokenizer; pass prompt_token_ids (skip_tokenizer_init is set)"
            )
        # Like vLLM: the tokenizer's own special tokens (e.g. BOS) are added.
        return self.tokenizer.encode(text, add_special_tokens=True)

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        out = [int(t) for t in ids]
        vocab = self.runner.vocab_size
        bad = [t for t in out if not 0 <= t < vocab]
        if bad:
            raise InvalidRequestError(
                f"prompt token id {bad[0]} is out of range for the vocabulary of {vocab} tokens"
            )
        return out

    def abort_request(self, request_id: str | Sequence[str]) -> None:
        """Abort requests in any state; unknown ids are ignored (as in vLLM)."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            req = self.requests.pop(rid, None)
            if req is None:
                continue
            for child in req.children:
                self._forget_child(child.core_id)

    def _forget_child(self, core_id: str) -> None:
        self._children.pop(core_id, None)
        self.structured.remove_request(core_id)
        try:
            self.core.abort_request(core_id)
        except UnknownRequestError:
            pass  # already finished in the core
        try:
            self.runner.remove_request(core_id)
        except UnknownRequestError:
            pass

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    # -- the step -----------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one engine step and return the outputs that are due this step."""
        if self.async_scheduling:
            return self._step_overlapped()
        batch = self.core.schedule()
        if len(batch.req_ids) == 0:
            return []
        bitmask = None
        if len(self.structured):
            mask = batch.sampling_mask
            sampling_ids = [r for r, m in zip(batch.req_ids, mask, strict=True) if m]
            bitmask = self.structured.grammar_bitmask(sampling_ids)
        result = self.runner.execute_model(batch, grammar_bitmask=bitmask)
        self.structured.accept_tokens(result.req_ids, result.sampled_token_ids)
        return self._apply(result)

    def _step_overlapped(self) -> list[RequestOutput]:
        """Schedule and run step N+1 before step N's samples reach the core: a request
        that sampled in N decodes in N+1 from a placeholder (input id -1) that the runner
        fills with its own sample. Step N's tokens are applied after N+1 was launched
        (on a GPU its kernels are queued first, so freeing N's finished blocks cannot
        race with them; on the CPU the forward has simply finished). A request that
        finished in N drops its N+1 sample in the core."""
        batch = self.core.schedule()
        result = self.runner.execute_model(batch) if len(batch.req_ids) else None
        previous, self._in_flight = self._in_flight, result
        return self._apply(previous) if previous is not None else []

    def _apply(self, result: ModelRunnerOutput) -> list[RequestOutput]:
        """Give a step's samples to the core and turn its updates into outputs."""
        updates = self.core.update(result.sampled_token_ids)
        self.stats.num_steps += 1
        now = time.time()
        touched: dict[str, _Request] = {}
        self._collect_prompt_logprobs(result, touched)
        # Rows of the step, by request: the core leaves out requests that finished or
        # were aborted meanwhile, so an update's position is not its row.
        rows = {req_id: row for row, req_id in enumerate(result.req_ids)}
        for upd in updates:
            entry = self._children.get(upd.request_id)
            if entry is None:
                continue
            row = rows[upd.request_id]
            req, child = entry
            child.token_ids.append(int(upd.token_id))
            child.text += upd.text
            if child.logprobs is not None and result.logprobs is not None:
                self._append_logprobs(child, result, row)
            if upd.finished:
                child.finish_reason = upd.finish_reason
                child.stop_reason = upd.stop_reason
                reason = upd.finish_reason or "stop"
                self.stats.finished_by_reason[reason] = (
                    self.stats.finished_by_reason.get(reason, 0) + 1
                )
                self._children.pop(child.core_id, None)
                self.structured.remove_request(child.core_id)
                self.runner.remove_request(child.core_id)
            if req.first_token_time is None:
                req.first_token_time = now
            req.last_token_time = now
            touched[req.request_id] = req
        self.stats.generation_tokens += len(updates)
        outputs = []
        for req in touched.values():
            out = self._make_output(req)
            if out is not None:
                outputs.append(out)
            if req.finished:
                self.requests.pop(req.request_id, None)
        return outputs

    def _append_logprobs(self, child: _Child, result: ModelRunnerOutput, row: int) -> None:
        lp = result.logprobs
        assert lp is not None and child.logprobs is not None
        k = child.params.logprobs or 0
        ids = lp.token_ids[row]
        values = lp.logprobs[row]
        entry: dict[int, Logprob] = {
            int(ids[0]): Logprob(float(values[0]), int(lp.ranks[row]), self.token_text(int(ids[0])))
        }
        for j in range(1, 1 + k):
            tok = int(ids[j])
            if tok not in entry:
                entry[tok] = Logprob(float(values[j]), j, self.token_text(tok))
        child.logprobs.append(entry)
        child.cumulative_logprob = (child.cumulative_logprob or 0.0) + float(values[0])

    def _collect_prompt_logprobs(
        self, result: ModelRunnerOutput, touched: dict[str, _Request]
    ) -> None:
        for core_id, plp in result.prompt_logprobs.items():
            entry = self._children.get(core_id)
            if entry is None or entry[0].prompt_logprobs is None:
                continue
            req, child = entry
            if child.index != 0:
                continue
            assert req.prompt_logprobs is not None
            for i in range(len(plp.ranks)):
                pos = plp.start + i
                if not 0 <= pos < len(req.prompt_logprobs):
                    continue
                ids = plp.token_ids[i]
                values = plp.logprobs[i]
                d: dict[int, Logprob] = {
                    int(ids[0]): Logprob(
                        float(values[0]), int(plp.ranks[i]), self.token_text(int(ids[0]))
                    )
                }
                for j in range(1, len(ids)):
                    d.setdefault(
                        int(ids[j]), Logprob(float(values[j]), j, self.token_text(int(ids[j])))
                    )
                req.prompt_logprobs[pos] = d

    def token_text(self, token_id: int) -> str:
        """One token's text as a logprob entry shows it (cached)."""
        text = self._token_text.get(token_id)
        if text is None:
            text = (
                self.tokenizer.decode([token_id], skip_special_tokens=False)
                if self.tokenizer is not None
                else ""
            )
            self._token_text[token_id] = text
        return text

    def _make_output(self, req: _Request) -> RequestOutput | None:
        kind = req.params.output_kind
        finished = req.finished
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        delta = kind == RequestOutputKind.DELTA
        completions = []
        for child in req.children:
            if delta:
                new_tokens = child.token_ids[child.sent_tokens :]
                finish_due = child.finish_reason is not None and not child.finish_sent
                if not new_tokens and not finish_due:
                    continue
                text = child.text[child.sent_text :]
                logprobs = (
                    child.logprobs[child.sent_logprobs :] if child.logprobs is not None else None
                )
            else:
                new_tokens = list(child.token_ids)
                text = child.text
                logprobs = list(child.logprobs) if child.logprobs is not None else None
            completions.append(
                CompletionOutput(
                    index=child.index,
                    text=text,
                    token_ids=new_tokens,
                    cumulative_logprob=child.cumulative_logprob,
                    logprobs=logprobs,
                    finish_reason=child.finish_reason,
                    stop_reason=child.stop_reason,
                )
            )
            child.sent_text = len(child.text)
            child.sent_tokens = len(child.token_ids)
            child.sent_logprobs = len(child.logprobs) if child.logprobs is not None else 0
            child.finish_sent = child.finish_reason is not None
        if not completions:
            return None
        return RequestOutput(
            request_id=req.request_id,
            prompt=req.prompt,
            prompt_token_ids=req.prompt_token_ids,
            outputs=completions,
            finished=finished,
            prompt_logprobs=req.prompt_logprobs,
            metrics=self._metrics(req),
        )

    @staticmethod
    def _metrics(req: _Request) -> dict[str, float]:
        metrics = {"arrival_time": req.arrival_time}
        if req.first_token_time is not None:
            metrics["first_token_time"] = req.first_token_time
        if req.last_token_time is not None:
            metrics["last_token_time"] = req.last_token_time
        return metrics

    # -- introspection ------------------------------------------------------------------
    def get_stats(self) -> dict[str, Any]:
        core = dict(self.core.stats())
        core.update(
            num_running=self.core.num_running,
            num_waiting=self.core.num_waiting,
            prompt_tokens=self.stats.prompt_tokens,
            generation_tokens=self.stats.generation_tokens,
            finished_by_reason=dict(self.stats.finished_by_reason),
            num_steps=self.stats.num_steps,
        )
        return core

    def kv_blocks_in_use(self) -> int:
        return int(self.core.stats()["blocks_in_use"])
