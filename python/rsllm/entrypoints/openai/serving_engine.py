"""What chat and completions share: model names, prompt limits, sampling parameters,
running a request on the engine (aborting it when the client goes away), SSE framing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request
from pydantic import BaseModel

from rsllm.entrypoints.openai.errors import ModelNotFoundError, exception_response
from rsllm.entrypoints.openai.metrics import ServerMetrics
from rsllm.entrypoints.openai.protocol import TopLogprob, _SamplingRequest
from rsllm.errors import InvalidRequestError, RsllmError
from rsllm.outputs import Logprob, RequestOutput
from rsllm.sampling_params import RequestOutputKind, SamplingParams

logger = logging.getLogger("rsllm.serve")

# A client that went away gets no answer; 499 only shows in the access log.
CLIENT_CLOSED = 499

# OpenAI's limit on choices per request; more would only queue behind each other.
MAX_N = 128

# Logprobs may be -inf (a token masked out); JSON has no infinity, so clamp like vLLM.
_MIN_LOGPROB = -9999.0


class Engine(Protocol):
    """The part of `rsllm.engine.async_llm.AsyncLLM` the server uses."""

    @property
    def served_model_name(self) -> str: ...
    @property
    def max_model_len(self) -> int: ...
    @property
    def tokenizer(self) -> Any: ...  # None with --skip-tokenizer-init
    @property
    def default_sampling_params(self) -> dict[str, Any]: ...
    @property
    def errored(self) -> bool: ...

    def generate(
        self,
        prompt: dict[str, Any],
        sampling_params: SamplingParams,
        request_id: str,
        *,
        priority: int = 0,
    ) -> AsyncIterator[RequestOutput]: ...

    async def abort(self, request_id: str) -> None: ...

    def get_stats(self) -> dict[str, Any]: ...

    def shutdown(self) -> None: ...


@dataclass
class ServerConfig:
    """The server-side settings a handler needs (from the CLI's server flags)."""

    served_model_names: list[str]
    chat_template: str | None = None
    response_role: str = "assistant"
    max_logprobs: int = 20
    scheduling_policy: str = "fcfs"
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    log_requests: bool = True
    model_root: str | None = None


class OpenAIServing:
    """Base of the endpoint handlers: validation and the engine round trip."""

    def __init__(self, engine: Engine, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len

    @property
    def tok(self) -> Any:
        """The tokenizer, for what needs text; none with --skip-tokenizer-init."""
        if self.tokenizer is None:
            raise InvalidRequestError(
                "the server runs without a tokenizer (--skip-tokenizer-init): "
                "send prompts as token ids to /v1/completions"
            )
        return self.tokenizer

    @property
    def vocab_size(self) -> int | None:
        return None if self.tokenizer is None else int(self.tokenizer.vocab_size)

    @property
    def model_name(self) -> str:
        return self.config.served_model_names[0]

    def check_model(self, name: str | None) -> None:
        if name is not None and name not in self.config.served_model_names:
            raise ModelNotFoundError(
                f"The model `{name}` does not exist. Served: "
                f"{', '.join(self.config.served_model_names)}"
            )

    def check_priority(self, priority: int) -> None:
        if priority != 0 and self.config.scheduling_policy != "priority":
            raise InvalidRequestError("priority is only honoured with --scheduling-policy priority")

    def max_tokens_for(self, requested: int | None, num_prompt_tokens: int) -> int:
        """`max_tokens`, defaulting to what fits; never clamped: too long is a 400."""
        room = self.max_model_len - num_prompt_tokens
        if room < 1:
            raise InvalidRequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. "
                f"However, your prompt has {num_prompt_tokens} tokens, which leaves no room "
                "for the completion. Please reduce the length of the prompt."
            )
        if requested is None:
            default = self.engine.default_sampling_params.get("max_tokens")
            return min(room, default) if default else room
        if requested >= 1 and num_prompt_tokens + requested > self.max_model_len:
            raise InvalidRequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. "
                f"However, you requested {num_prompt_tokens + requested} tokens "
                f"({num_prompt_tokens} in the prompt, {requested} for the completion). "
                "Please reduce the length of the prompt or the completion."
            )
        return requested

    def sampling_params(
        self,
        request: _SamplingRequest,
        *,
        max_tokens: int,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
    ) -> SamplingParams:
        if request.n is not None and request.n > MAX_N:
            raise InvalidRequestError(f"n must be at most {MAX_N}, got {request.n}")
        for name, value in (("logprobs", logprobs), ("prompt_logprobs", prompt_logprobs)):
            if value is not None and value > self.config.max_logprobs:
                raise InvalidRequestError(
                    f"{name}={value} is more than this server's --max-logprobs "
                    f"({self.config.max_logprobs})"
                )
        # The model's generation config first, then whatever the request sets.
        values: dict[str, Any] = {
            k: v for k, v in self.engine.default_sampling_params.items() if k != "max_tokens"
        }
        for name in (
            "n", "temperature", "top_p", "top_k", "min_p", "presence_penalty",
            "frequency_penalty", "repetition_penalty", "seed", "stop", "stop_token_ids",
        ):  # fmt: skip
            value = getattr(request, name)
            if value is not None:
                values[name] = value
        values.update(
            max_tokens=max_tokens,
            min_tokens=request.min_tokens,
            ignore_eos=request.ignore_eos,
            skip_special_tokens=request.skip_special_tokens,
            spaces_between_special_tokens=request.spaces_between_special_tokens,
            include_stop_str_in_output=request.include_stop_str_in_output,
            logit_bias=self._logit_bias(request.logit_bias),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            output_kind=RequestOutputKind.DELTA,  # the server always consumes deltas
        )
        return SamplingParams(**values)

    def _logit_bias(self, bias: dict[str, float] | None) -> dict[int, float] | None:
        if not bias:
            return None
        vocab = self.vocab_size
        out = {}
        for key, value in bias.items():
            try:
                token = int(key)
            except ValueError:
                raise InvalidRequestError(f"logit_bias: {key!r} is not a token id") from None
            if token < 0 or (vocab is not None and token >= vocab):
                raise InvalidRequestError(f"logit_bias: token id {token} is out of vocabulary")
            if not -100.0 <= value <= 100.0:
                raise InvalidRequestError(f"logit_bias: {value} is outside [-100, 100]")
            out[token] = value
        return out

    def check_token_ids(self, ids: list[int], what: str) -> None:
        vocab = self.vocab_size
        bad = [t for t in ids if t < 0 or (vocab is not None and t >= vocab)]
        if bad:
            raise InvalidRequestError(f"{what}: token ids out of vocabulary: {bad[:5]}")

    async def run(
        self,
        prompt_ids: list[int],
        prompt_text: str | None,
        params: SamplingParams,
        request_id: str,
        priority: int,
    ) -> AsyncIterator[RequestOutput]:
        """The engine's deltas for one request, counted in the metrics; leaving early
        (the client went away) aborts the request, which frees its KV blocks."""
        timer = self.metrics.request_timer(len(prompt_ids))
        if self.config.log_requests:
            logger.info(
                "request %s: %d prompt tokens, n=%d, max_tokens=%s, temperature=%s",
                request_id,
                len(prompt_ids),
                params.n,
                params.max_tokens,
                params.temperature,
            )
        unfinished = set(range(params.n))
        stream = self.engine.generate(
            {"prompt_token_ids": prompt_ids, "prompt": prompt_text},
            params,
            request_id,
            priority=priority,
        )
        try:
            async for output in stream:
                for choice in output.outputs:
                    timer.on_tokens(len(choice.token_ids))
                    if choice.finish_reason is not None:
                        timer.on_finish(choice.finish_reason)
                        unfinished.discard(choice.index)
                yield output
                if output.finished:
                    break
        finally:
            timer.on_done()
            for _ in unfinished:
                timer.on_finish("abort")
            await _close(self.engine, stream, request_id, abort=bool(unfinished))

    def token_text(self, token_id: int, logprob: Logprob | None = None) -> str:
        if logprob is not None and logprob.decoded_token is not None:
            return logprob.decoded_token
        if self.tokenizer is None:
            return ""
        return str(self.tokenizer.decode([token_id], skip_special_tokens=False))

    def top_logprobs(self, entry: dict[int, Logprob], k: int) -> list[TopLogprob]:
        ranked = sorted(entry.items(), key=lambda kv: -kv[1].logprob)[:k]
        return [self.top_logprob(t, lp) for t, lp in ranked]

    def top_logprob(self, token_id: int, lp: Logprob) -> TopLogprob:
        text = self.token_text(token_id, lp)
        return TopLogprob(
            token=text, logprob=clamp_logprob(lp.logprob), bytes=list(text.encode("utf-8"))
        )


def clamp_logprob(value: float) -> float:
    return max(value, _MIN_LOGPROB)


async def _close(
    engine: Engine, stream: AsyncIterator[Any], request_id: str, *, abort: bool
) -> None:
    aclose = getattr(stream, "aclose", None)
    try:
        if aclose is not None:
            await aclose()
        if abort:
            await engine.abort(request_id)
    except (RsllmError, KeyError):
        pass  # already finished or already aborted by closing the stream
    except Exception:
        logger.warning("closing request %s failed", request_id, exc_info=True)


async def first_output(outputs: AsyncIterator[RequestOutput]) -> RequestOutput:
    try:
        return await anext(outputs)
    except StopAsyncIteration:
        raise RuntimeError("the engine returned no output") from None


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read by then, so the next ASGI message is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work` unless the client disconnects first; then cancel it (which aborts the
    engine request in `OpenAIServing.run`) and return None."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled() or not task.done():
        try:
            await task
        except asyncio.CancelledError:
            pass
        return None
    return task.result()


def sse(payload: BaseModel | dict[str, Any], exclude: set[str] | None = None) -> str:
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json(exclude=exclude)
    else:
        data = json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def sse_with_errors(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Frame a stream's events; an error after the headers went out becomes an error event."""
    try:
        async for event in events:
            yield event
    except Exception as exc:
        response = exception_response(exc)
        yield f"data: {bytes(response.body).decode()}\n\n"
    yield SSE_DONE
