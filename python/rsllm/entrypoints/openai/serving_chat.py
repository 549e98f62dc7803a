"""`POST /v1/chat/completions`: template, tokenize, generate, answer (JSON or SSE)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from rsllm.chat_template import render_chat
from rsllm.entrypoints.openai.protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatLogprobs,
    ChatLogprobToken,
    ChatResponseMessage,
    DeltaMessage,
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
from rsllm.entrypoints.openai.tool_parsers import ToolParser
from rsllm.entrypoints.openai.tool_parsers.tool_choice import ToolPlan, plan_tools
from rsllm.errors import InvalidRequestError
from rsllm.outputs import CompletionOutput, RequestOutput


@dataclass
class _Choice:
    """One choice of a non-streamed answer, accumulated from the deltas."""

    text: str = ""
    num_tokens: int = 0
    logprobs: list[ChatLogprobToken] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class OpenAIServingChat(OpenAIServing):
    async def create(self, request: ChatCompletionRequest, raw: Request) -> Response:
        self.check_model(request.model)
        self.check_priority(request.priority)
        plan = self._check_tools_and_formats(request)
        prompt_text = self.render(request, plan.template_tools)
        prompt_ids = list(
            self.tok.encode(prompt_text, add_special_tokens=request.add_special_tokens)
        )
        requested = (
            request.max_completion_tokens
            if request.max_completion_tokens is not None
            else request.max_tokens
        )
        if request.top_logprobs is not None and not request.logprobs:
            raise InvalidRequestError("top_logprobs needs logprobs set to true")
        num_logprobs = (request.top_logprobs or 0) if request.logprobs else None
        params = self.sampling_params(
            request,
            max_tokens=self.max_tokens_for(requested, len(prompt_ids)),
            logprobs=num_logprobs,
        )
        params.structured_outputs = plan.structured_outputs
        if plan.keep_special_tokens:
            params.skip_special_tokens = False  # the parser's markers are special tokens
        request_id = random_id("chatcmpl")
        outputs = self.run(prompt_ids, prompt_text, params, request_id, request.priority)
        if request.stream:
            # Wait for the first output before the 200 goes out, so that an input the
            # engine refuses is still an HTTP error and not an error event.
            first = await until_disconnect(raw, first_output(outputs))
            if first is None:
                return Response(status_code=CLIENT_CLOSED)
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            events = self._stream(
                request, plan, request_id, first, outputs, params.n, len(prompt_ids), include_usage
            )
            return StreamingResponse(sse_with_errors(events), media_type="text/event-stream")
        response = await until_disconnect(
            raw, self._collect(request, plan, request_id, outputs, params.n, len(prompt_ids))
        )
        if response is None:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(response.model_dump())

    def render(self, request: ChatCompletionRequest, tools: list[dict[str, Any]] | None) -> str:
        source = request.chat_template or self.config.chat_template
        source = source or self.tok.chat_template
        if not source:
            raise InvalidRequestError(
                "this model has no chat template: start the server with --chat-template "
                "(a file or an inline Jinja template), or send `chat_template`"
            )
        return render_chat(
            source,
            [m.model_dump(exclude_none=True) for m in request.messages],
            bos_token=self.tok.bos_token,
            eos_token=self.tok.eos_token,
            add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message,
            tools=tools,
            template_kwargs=request.chat_template_kwargs,
        )

    def _check_tools_and_formats(self, request: ChatCompletionRequest) -> ToolPlan:
        """The tools the template sees, the decoding constraint and the tool-call parser."""
        return plan_tools(
            tools=request.tools,
            tool_choice=request.tool_choice,
            parallel_tool_calls=request.parallel_tool_calls,
            response_format=request.response_format,
            structured_outputs=request.structured_outputs,
            enable_auto_tool_choice=self.config.enable_auto_tool_choice,
            tool_call_parser=self.config.tool_call_parser,
            tokenizer=self.tokenizer,
        )

    def _logprobs(self, choice: CompletionOutput, k: int) -> list[ChatLogprobToken]:
        tokens = []
        for token_id, entry in zip(choice.token_ids, choice.logprobs or [], strict=False):
            sampled = entry.get(token_id)
            text = self.token_text(token_id, sampled)
            tokens.append(
                ChatLogprobToken(
                    token=text,
                    logprob=clamp_logprob(sampled.logprob) if sampled else -9999.0,
                    bytes=list(text.encode("utf-8")),
                    top_logprobs=self.top_logprobs(entry, k),
                )
            )
        return tokens

    async def _collect(
        self,
        request: ChatCompletionRequest,
        plan: ToolPlan,
        request_id: str,
        outputs: AsyncIterator[RequestOutput],
        n: int,
        num_prompt_tokens: int,
    ) -> ChatCompletionResponse:
        choices = [_Choice() for _ in range(n)]
        k = request.top_logprobs or 0
        async for output in outputs:
            for out in output.outputs:
                acc = choices[out.index]
                acc.text += out.text
                acc.num_tokens += len(out.token_ids)
                if request.logprobs:
                    acc.logprobs.extend(self._logprobs(out, k))
                if out.finish_reason is not None:
                    acc.finish_reason, acc.stop_reason = out.finish_reason, out.stop_reason
        return ChatCompletionResponse(
            id=request_id,
            model=self.model_name,
            choices=[
                self._choice(i, c, plan.new_parser(self.tokenizer), request)
                for i, c in enumerate(choices)
            ],
            usage=_usage(num_prompt_tokens, sum(c.num_tokens for c in choices)),
        )

    def _choice(
        self, i: int, c: _Choice, parser: ToolParser | None, request: ChatCompletionRequest
    ) -> ChatCompletionChoice:
        message = ChatResponseMessage(role=self.config.response_role, content=c.text)
        finish_reason = c.finish_reason
        if parser is not None:
            found = parser.extract_tool_calls(c.text)
            if found.tools_called:  # never an empty tool_calls list
                message.content, message.tool_calls = found.content, found.tool_calls
                finish_reason = "tool_calls"
        return ChatCompletionChoice(
            index=i,
            message=message,
            logprobs=ChatLogprobs(content=c.logprobs) if request.logprobs else None,
            finish_reason=finish_reason,
            stop_reason=c.stop_reason,
        )

    async def _stream(
        self,
        request: ChatCompletionRequest,
        plan: ToolPlan,
        request_id: str,
        first: RequestOutput,
        outputs: AsyncIterator[RequestOutput],
        n: int,
        num_prompt_tokens: int,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        created = int(time.time())
        # With include_usage every chunk carries "usage": null, and one last chunk with
        # no choices carries the totals (the only place AutoGen reads usage from).
        exclude = None if include_usage else {"usage"}

        def chunk(choice: ChatCompletionStreamChoice) -> str:
            body = ChatCompletionChunk(
                id=request_id, created=created, model=self.model_name, choices=[choice]
            )
            return sse(body, exclude)

        for i in range(n):
            role = DeltaMessage(role=self.config.response_role, content="")
            yield chunk(ChatCompletionStreamChoice(index=i, delta=role))
        num_tokens = 0
        k = request.top_logprobs or 0
        # Per choice: its tool-call parser (None: plain text) and the text so far.
        parsers = [plan.new_parser(self.tokenizer) for _ in range(n)]
        texts = [""] * n
        output: RequestOutput | None = first
        while output is not None:
            for out in output.outputs:
                num_tokens += len(out.token_ids)
                logprobs = (
                    ChatLogprobs(content=self._logprobs(out, k)) if request.logprobs else None
                )
                parser = parsers[out.index]
                delta: DeltaMessage | None = DeltaMessage(content=out.text)
                if parser is not None:
                    delta = parser.extract_tool_calls_streaming(texts[out.index], out.text)
                    texts[out.index] += out.text
                    if out.finish_reason is not None:
                        delta = _join(delta, parser.finish_streaming(texts[out.index]))
                if (delta and (delta.content or delta.tool_calls)) or (
                    logprobs and logprobs.content
                ):
                    yield chunk(
                        ChatCompletionStreamChoice(
                            index=out.index, delta=delta or DeltaMessage(), logprobs=logprobs
                        )
                    )
                if out.finish_reason is not None:
                    called = parser is not None and parser.tools_called
                    yield chunk(
                        ChatCompletionStreamChoice(
                            index=out.index,
                            delta=DeltaMessage(),
                            finish_reason="tool_calls" if called else out.finish_reason,
                            stop_reason=out.stop_reason,
                        )
                    )
            output = await anext(outputs, None)
        if include_usage:
            usage = _usage(num_prompt_tokens, num_tokens)
            body = ChatCompletionChunk(
                id=request_id, created=created, model=self.model_name, choices=[], usage=usage
            )
            yield sse(body)


def _join(a: DeltaMessage | None, b: DeltaMessage | None) -> DeltaMessage | None:
    """Two deltas of the same choice as one (a parser's last delta and what it held)."""
    if a is None or b is None:
        return a or b
    content = (a.content or "") + (b.content or "")
    calls = (a.tool_calls or []) + (b.tool_calls or [])
    return DeltaMessage(content=content or None, tool_calls=calls or None)


def _usage(prompt_tokens: int, completion_tokens: int) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
