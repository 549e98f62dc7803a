"""vLLM's `POST /tokenize` and `POST /detokenize`, with the server's own tokenizer and
chat template (so a client can count tokens exactly as a request would)."""

from __future__ import annotations

from rsllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from rsllm.entrypoints.openai.serving_chat import OpenAIServingChat
from rsllm.errors import InvalidRequestError


class OpenAIServingTokenization(OpenAIServingChat):
    def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        self.check_model(request.model)
        if (request.prompt is None) == (request.messages is None):
            raise InvalidRequestError("give exactly one of `prompt` and `messages`")
        if request.messages is not None:
            chat = ChatCompletionRequest(
                messages=request.messages,
                add_generation_prompt=request.add_generation_prompt,
                continue_final_message=request.continue_final_message,
                chat_template=request.chat_template,
                chat_template_kwargs=request.chat_template_kwargs,
            )
            text = self.render(chat, request.tools)
            add_special = bool(request.add_special_tokens)
        else:
            text = str(request.prompt)
            add_special = request.add_special_tokens is not False
        ids = list(self.tok.encode(text, add_special_tokens=add_special))
        strs = None
        if request.return_token_strs:
            strs = [self.token_text(t) for t in ids]
        return TokenizeResponse(
            count=len(ids), max_model_len=self.max_model_len, tokens=ids, token_strs=strs
        )

    def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        self.check_model(request.model)
        self.check_token_ids(request.tokens, "tokens")
        text = self.tok.decode(request.tokens, skip_special_tokens=False)
        return DetokenizeResponse(prompt=str(text))
