"""`LLM`: vLLM's offline API over `LLMEngine`."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm import tqdm

from rsllm.chat_template import render_chat
from rsllm.engine.arg_utils import EngineArgs
from rsllm.engine.llm_engine import LLMEngine
from rsllm.errors import InvalidRequestError
from rsllm.outputs import RequestOutput
from rsllm.sampling_params import RequestOutputKind, SamplingParams
from rsllm.tokenizer import Tokenizer

PromptType = str | Mapping[str, Any] | Sequence[int]
Conversation = Sequence[Mapping[str, Any]]


class LLM:
    """Offline batch generation: `LLM(model=...).generate(prompts, SamplingParams(...))`.

    Keyword arguments are `EngineArgs`' (vLLM's names); an unknown one raises `TypeError`.
    `model=None` is the embedded default, SmolLM2-135M-Instruct.
    """

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        self.engine_args = EngineArgs(model=model, **kwargs)
        self.llm_engine = LLMEngine(self.engine_args)
        self._counter = itertools.count()

    def get_tokenizer(self) -> Tokenizer:
        if self.llm_engine.tokenizer is None:
            raise InvalidRequestError("this LLM was started with skip_tokenizer_init")
        return self.llm_engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt; the outputs come back in the prompts' order.

        A prompt is a string, `{"prompt": str}` or `{"prompt_token_ids": [...]}`; a
        flat list of ints is one tokenized prompt."""
        batch = self._as_batch(prompts)
        params = self._params_for(batch, sampling_params)
        if priority is not None and len(priority) != len(batch):
            raise InvalidRequestError(
                f"priority has {len(priority)} entries for {len(batch)} prompts"
            )
        return self._run(batch, params, priority, use_tqdm)

    def chat(
        self,
        messages: Conversation | Sequence[Conversation],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Apply the chat template (the model's own, or `chat_template`) to one
        conversation or a list of them, then generate."""
        tokenizer = self.get_tokenizer()
        source = chat_template or tokenizer.chat_template
        if source is None:
            raise InvalidRequestError(
                "the model has no chat template; pass chat_template=... (a Jinja template)"
            )
        conversations: Sequence[Conversation]
        if messages and isinstance(messages[0], Mapping):
            conversations = [messages]  # type: ignore[list-item]
        else:
            conversations = messages  # type: ignore[assignment]
        prompts: list[PromptType] = []
        for conversation in conversations:
            text = render_chat(
                source,
                conversation,
                bos_token=tokenizer.bos_token,
                eos_token=tokenizer.eos_token,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tools=tools,
                template_kwargs=chat_template_kwargs,
            )
            # The template already wrote BOS and the like: add no special tokens.
            prompts.append({"prompt": text, "prompt_token_ids": tokenizer.encode(text)})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    # -- internals ----------------------------------------------------------------------
    @staticmethod
    def _as_batch(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
        if isinstance(prompts, (str, Mapping)):
            return [prompts]
        if isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int):
            return [prompts]  # one tokenized prompt
        return list(prompts)  # type: ignore[arg-type]

    @staticmethod
    def _params_for(
        batch: list[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None,
    ) -> list[SamplingParams]:
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * len(batch)
        params = list(sampling_params)
        if len(params) != len(batch):
            raise InvalidRequestError(
                f"{len(params)} sampling params for {len(batch)} prompts; pass one or one each"
            )
        return params

    def _run(
        self,
        batch: list[PromptType],
        params: list[SamplingParams],
        priority: Sequence[int] | None,
        use_tqdm: bool,
    ) -> list[RequestOutput]:
        engine = self.llm_engine
        ids: list[str] = []
        try:
            for i, (prompt, p) in enumerate(zip(batch, params, strict=True)):
                rid = str(next(self._counter))
                final = p.clone(output_kind=RequestOutputKind.FINAL_ONLY)
                engine.add_request(
                    rid, prompt, final, priority=priority[i] if priority is not None else 0
                )
                ids.append(rid)
            results: dict[str, RequestOutput] = {}
            bar = tqdm(total=len(ids), desc="Processed prompts", disable=not use_tqdm)
            started = time.perf_counter()
            out_tokens = 0
            with bar:
                while engine.has_unfinished_requests():
                    for out in engine.step():
                        if out.finished:
                            results[out.request_id] = out
                            out_tokens += sum(len(c.token_ids) for c in out.outputs)
                            elapsed = max(time.perf_counter() - started, 1e-9)
                            bar.set_postfix_str(f"output {out_tokens / elapsed:.1f} tok/s")
                            bar.update(1)
        except BaseException:
            engine.abort_request(ids)
            raise
        return [results[rid] for rid in ids]
