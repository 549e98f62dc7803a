"""`POST /v1/completions` (the legacy API): one or several prompts, text or token ids."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from rsllm.entrypoints.openai.errors import UnsupportedFeatureError
from rsllm.entrypoints.openai.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    UsageInfo,
    random_id,
)
from rsllm.entrypoints.openai.serving_engine import (
    CLIENT_CLOSED,
    OpenAIServing,
    clamp_logprob,
    first_output,
    sse,
    sse_with_errors,
    until_disconnect,
)
from rsllm.errors import InvalidRequestError
from rsllm.outputs import Logprob, PromptLogprobs, RequestOutput, SampleLogprobs
from rsllm.structured_outputs import from_openai_request


@dataclass
class _Prompt:
    token_ids: list[int]
    text: str | None  # None for a token-id prompt until someone needs it (echo)
    logprobs: PromptLogprobs | None = None  # from the engine's first output, for echo


@dataclass
class _Choice:
    text: str = ""
    num_tokens: int = 0
    offset: int = 0  # text_offset of the next token
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    echoed: bool = False


class OpenAIServingCompletion(OpenAIServing):
    async def create(self, request: CompletionRequest, raw: Request) -> Response:
        self.check_model(request.model)
        self.check_priority(request.priority)
        if request.suffix:
            raise UnsupportedFeatureError("suffix is not supported")
        if request.best_of is not None and request.best_of != (request.n or 1):
            raise UnsupportedFeatureError("best_of different from n is not supported")
        constraint = from_openai_request(request.response_format, request.structured_outputs)
        prompts = self._prompts(request)
        echo_logprobs = request.logprobs if request.echo else None
        params = [
            self.sampling_params(
                request,
                max_tokens=self.max_tokens_for(request.max_tokens, len(p.token_ids)),
                logprobs=request.logprobs,
                prompt_logprobs=echo_logprobs,
            )
            for p in prompts
        ]
        for sp in params:
            sp.structured_outputs = constraint
        base_id = random_id("cmpl")
        streams = [
            self.run(p.token_ids, p.text, sp, f"{base_id}-{i}", request.priority)
            for i, (p, sp) in enumerate(zip(prompts, params, strict=True))
        ]
        n = params[0].n
        if request.stream:
            firsts = await until_disconnect(raw, asyncio.gather(*map(first_output, streams)))
            if firsts is None:
                return Response(status_code=CLIENT_CLOSED)
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            events = self._stream(request, base_id, prompts, firsts, streams, n, include_usage)
            return StreamingResponse(sse_with_errors(events), media_type="text/event-stream")
        response = await until_disconnect(raw, self._collect(request, base_id, prompts, streams, n))
        if response is None:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(response.model_dump())

    def _prompts(self, request: CompletionRequest) -> list[_Prompt]:
        prompt = request.prompt
        if isinstance(prompt, str):
            items: list[str | list[int]] = [prompt]
        elif prompt and all(isinstance(t, int) for t in prompt):
            items = [prompt]  # type: ignore[list-item]  # one prompt of token ids
        else:
            items = list(prompt)  # type: ignore[arg-type]
        if not items:
            raise InvalidRequestError("prompt must not be empty")
        out = []
        for item in items:
            if isinstance(item, str):
                ids = list(self.tok.encode(item, add_special_tokens=request.add_special_tokens))
                out.append(_Prompt(ids, item))
            else:
                self.check_token_ids(item, "prompt")
                out.append(_Prompt(list(item), None))
            if not out[-1].token_ids:
                raise InvalidRequestError("prompt must not be empty")
        return out

    def _prompt_text(self, prompt: _Prompt) -> str:
        if prompt.text is None:
            prompt.text = str(self.tok.decode(prompt.token_ids, skip_special_tokens=False))
        return prompt.text

    def _append_logprobs(
        self,
        acc: _Choice,
        token_ids: list[int],
        entries: SampleLogprobs | PromptLogprobs | None,
        first_is_none: bool = False,
    ) -> CompletionLogprobs:
        """Append one delta's tokens to `acc` and return just this delta's logprobs."""
        delta = CompletionLogprobs()
        for j, token_id in enumerate(token_ids):
            entry: dict[int, Logprob] | None = entries[j] if entries and j < len(entries) else None
            if first_is_none and j == 0:
                entry = None  # the first prompt token has no logprob
            sampled = entry.get(token_id) if entry else None
            text = self.token_text(token_id, sampled)
            delta.tokens.append(text)
            delta.text_offset.append(acc.offset)
            acc.offset += len(text)
            delta.token_logprobs.append(clamp_logprob(sampled.logprob) if sampled else None)
            delta.top_logprobs.append(
                {self.token_text(t, lp): clamp_logprob(lp.logprob) for t, lp in entry.items()}
                if entry
                else None
            )
        if acc.logprobs is not None:
            for name in ("tokens", "text_offset", "token_logprobs", "top_logprobs"):
                getattr(acc.logprobs, name).extend(getattr(delta, name))
        return delta

    def _echo(
        self, acc: _Choice, prompt: _Prompt, output: RequestOutput, want: bool
    ) -> tuple[str, CompletionLogprobs | None]:
        """The echoed prompt text and, if asked for, its logprobs (first one null)."""
        text = self._prompt_text(prompt)
        acc.echoed = True
        if output.prompt_logprobs is not None:
            prompt.logprobs = output.prompt_logprobs
        logprobs = None
        if want:
            if prompt.logprobs is None:
                raise UnsupportedFeatureError(
                    "echo with logprobs: the engine gave no prompt logprobs"
                )
            logprobs = self._append_logprobs(
                acc, prompt.token_ids, prompt.logprobs, first_is_none=True
            )
        acc.offset = len(text)
        return text, logprobs

    def _apply(
        self,
        acc: _Choice,
        out_text: str,
        token_ids: list[int],
        logprobs: SampleLogprobs | None,
        want_logprobs: bool,
    ) -> CompletionLogprobs | None:
        acc.text += out_text
        acc.num_tokens += len(token_ids)
        if not want_logprobs:
            return None
        return self._append_logprobs(acc, token_ids, logprobs)

    async def _collect(
        self,
        request: CompletionRequest,
        base_id: str,
        prompts: list[_Prompt],
        streams: list[AsyncIterator[RequestOutput]],
        n: int,
    ) -> CompletionResponse:
        want = request.logprobs is not None

        async def one(prompt: _Prompt, stream: AsyncIterator[RequestOutput]) -> list[_Choice]:
            choices = [_Choice(logprobs=CompletionLogprobs() if want else None) for _ in range(n)]
            async for output in stream:
                if request.echo and not choices[0].echoed:
                    for acc in choices:
                        acc.text, _ = self._echo(acc, prompt, output, want)
                for out in output.outputs:
                    acc = choices[out.index]
                    self._apply(acc, out.text, out.token_ids, out.logprobs, want)
                    if out.finish_reason is not None:
                        acc.finish_reason, acc.stop_reason = out.finish_reason, out.stop_reason
            return choices

        per_prompt = await asyncio.gather(
            *(one(p, s) for p, s in zip(prompts, streams, strict=True))
        )
        choices = [c for group in per_prompt for c in group]
        completion_tokens = sum(c.num_tokens for c in choices)
        prompt_tokens = sum(len(p.token_ids) for p in prompts)
        return CompletionResponse(
            id=base_id,
            model=self.model_name,
            choices=[
                CompletionChoice(
                    index=i,
                    text=c.text,
                    logprobs=c.logprobs,
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                )
                for i, c in enumerate(choices)
            ],
            usage=UsageInfo(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )

    async def _stream(
        self,
        request: CompletionRequest,
        base_id: str,
        prompts: list[_Prompt],
        firsts: list[RequestOutput],
        streams: list[AsyncIterator[RequestOutput]],
        n: int,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        created = int(time.time())
        exclude = None if include_usage else {"usage"}
        want = request.logprobs is not None
        accs = [[_Choice() for _ in range(n)] for _ in prompts]

        def chunk(choice: CompletionChoice) -> str:
            body = CompletionResponse(
                id=base_id, created=created, model=self.model_name, choices=[choice]
            )
            return sse(body, exclude)

        def events(i: int, output: RequestOutput) -> list[str]:
            found = []
            for out in output.outputs:
                acc = accs[i][out.index]
                index = i * n + out.index
                prefix, prefix_lp = "", None
                if request.echo and not acc.echoed:
                    # Echo goes with each choice's first delta (the prompt, then new text).
                    prefix, prefix_lp = self._echo(acc, prompts[i], output, want)
                delta_lp = self._apply(acc, out.text, out.token_ids, out.logprobs, want)
                if prefix_lp is not None and delta_lp is not None:
                    for name in ("tokens", "text_offset", "token_logprobs", "top_logprobs"):
                        getattr(prefix_lp, name).extend(getattr(delta_lp, name))
                    delta_lp = prefix_lp
                if prefix or out.text or out.finish_reason is not None or delta_lp:
                    found.append(
                        chunk(
                            CompletionChoice(
                                index=index,
                                text=prefix + out.text,
                                logprobs=delta_lp,
                                finish_reason=out.finish_reason,
                                stop_reason=out.stop_reason,
                            )
                        )
                    )
            return found

        for i, output in enumerate(firsts):
            for event in events(i, output):
                yield event
        async for i, output in _merge(streams):
            for event in events(i, output):
                yield event
        if include_usage:
            prompt_tokens = sum(len(p.token_ids) for p in prompts)
            completion_tokens = sum(c.num_tokens for group in accs for c in group)
            usage = UsageInfo(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )
            body = CompletionResponse(
                id=base_id, created=created, model=self.model_name, choices=[], usage=usage
            )
            yield sse(body)


async def _merge(
    streams: list[AsyncIterator[RequestOutput]],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several streams as their items arrive, tagged with the stream's index."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for item in stream:
                await queue.put((i, item))
            await queue.put((i, None))
        except Exception as e:
            await queue.put((i, e))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, got = await queue.get()
            if got is None:
                remaining -= 1
            elif isinstance(got, BaseException):
                raise got
            else:
                yield i, got
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
