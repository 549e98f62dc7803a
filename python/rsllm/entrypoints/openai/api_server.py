"""The OpenAI-compatible HTTP server: `python -m rsllm.serve` (FastAPI + uvicorn).

`build_app` wires an engine into the routes; `main` parses vLLM's flags, loads the
model and serves until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

import rsllm
from rsllm.chat_template import load_chat_template
from rsllm.engine.arg_utils import EngineArgs, explicit_dests, ignored_flag_warnings
from rsllm.entrypoints.openai.cli_args import make_arg_parser, validate_server_args
from rsllm.entrypoints.openai.errors import error_response, install_error_handlers
from rsllm.entrypoints.openai.metrics import ServerMetrics, log_stats_periodically
from rsllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
)
from rsllm.entrypoints.openai.serving_chat import OpenAIServingChat
from rsllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from rsllm.entrypoints.openai.serving_engine import Engine, ServerConfig
from rsllm.entrypoints.openai.serving_tokenization import OpenAIServingTokenization
from rsllm.errors import EngineDeadError, InvalidRequestError, RsllmError

logger = logging.getLogger("rsllm.serve")
_Body = TypeVar("_Body", bound=BaseModel)


class APIKeyMiddleware:
    """`Authorization: Bearer KEY` on /v1/* (pure ASGI: streaming and disconnect
    detection pass through untouched)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] != "OPTIONS"  # CORS preflights carry no credentials
            and scope["path"].startswith("/v1")
        ):
            given = dict(scope["headers"]).get(b"authorization", b"")
            # Constant time, so that the key cannot be guessed byte by byte from timings.
            if not hmac.compare_digest(given, self.expected):
                response = error_response(401, "Unauthorized: missing or wrong API key")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(
    engine: Engine,
    config: ServerConfig,
    *,
    api_key: str | None = None,
    allowed_origins: Sequence[str] = ("*",),
    allow_credentials: bool = False,
    log_stats: bool = True,
) -> FastAPI:
    """The FastAPI app serving `engine`; the engine is shut down with the app."""
    metrics = ServerMetrics(engine)
    chat = OpenAIServingChat(engine, config, metrics)
    completion = OpenAIServingCompletion(engine, config, metrics)
    tokenization = OpenAIServingTokenization(engine, config, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(log_stats_periodically(engine, metrics)) if log_stats else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            engine.shutdown()

    app = FastAPI(title="rsllm", version=rsllm.__version__, lifespan=lifespan)
    install_error_handlers(app)

    def check_alive() -> None:
        if engine.errored:
            raise EngineDeadError("the engine has stopped on an error; restart the server")

    @app.get("/health")
    async def health() -> Response:
        if engine.errored:
            return error_response(503, "the engine has stopped on an error")
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": rsllm.__version__}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        cards = [
            ModelCard(id=name, root=config.model_root, max_model_len=engine.max_model_len)
            for name in config.served_model_names
        ]
        return ModelList(data=cards).model_dump()

    # Bodies are parsed by hand: JSON whatever the Content-Type (curl -d sends a form
    # type), and every failure a 400 in OpenAI's shape.
    @app.post("/v1/chat/completions")
    async def chat_completions(raw: Request) -> Response:
        check_alive()
        return await chat.create(await parse_body(raw, ChatCompletionRequest), raw)

    @app.post("/v1/completions")
    async def completions(raw: Request) -> Response:
        check_alive()
        return await completion.create(await parse_body(raw, CompletionRequest), raw)

    @app.post("/tokenize")
    async def tokenize(raw: Request) -> JSONResponse:
        body = await parse_body(raw, TokenizeRequest)
        return JSONResponse(tokenization.tokenize(body).model_dump())

    @app.post("/detokenize")
    async def detokenize(raw: Request) -> JSONResponse:
        body = await parse_body(raw, DetokenizeRequest)
        return JSONResponse(tokenization.detokenize(body).model_dump())

    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    # Added last, so outermost: preflights and CORS headers also on 401 answers.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(allowed_origins),
        allow_credentials=allow_credentials,
        allow_methods=["*"],
        allow_headers=["*"],
    )
    return app


async def parse_body(raw: Request, model: type[_Body]) -> _Body:
    data = await raw.body()
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequestError(f"malformed JSON body: {e}") from None
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from None


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(levelname)s %(asctime)s [%(name)s] %(message)s",
        datefmt="%m-%d %H:%M:%S",
    )


def run_server(args: argparse.Namespace, given: set[str], parser: argparse.ArgumentParser) -> None:
    """Validate the flags, load the model, serve until interrupted."""
    _configure_logging()
    try:
        engine_args = EngineArgs.from_cli_args(args)
        validate_server_args(args)
        chat_template = load_chat_template(args.chat_template)
    except ValueError as e:
        parser.error(str(e))
    import torch

    for message in ignored_flag_warnings(
        engine_args, given, cuda_available=torch.cuda.is_available()
    ):
        logger.warning(message)
    # Imported here: `--help` and argument errors should not wait for torch and a model.
    from rsllm.engine.async_llm import AsyncLLM

    logger.info("rsllm %s: loading %s", rsllm.__version__, engine_args.model or "the default model")
    try:
        engine = AsyncLLM.from_engine_args(engine_args)
    except RsllmError as e:  # a model or tokenizer that does not load: say so, no traceback
        logger.error("cannot start: %s", e)
        raise SystemExit(1) from None
    config = ServerConfig(
        served_model_names=engine_args.served_model_name or [engine.served_model_name],
        chat_template=chat_template,
        response_role=args.response_role,
        max_logprobs=engine_args.max_logprobs,
        scheduling_policy=engine_args.scheduling_policy,
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser,
        log_requests=not args.disable_log_requests,
        model_root=str(engine.model_path),
    )
    app = build_app(
        engine,
        config,
        api_key=args.api_key,
        allowed_origins=args.allowed_origins,
        allow_credentials=args.allow_credentials,
        log_stats=not engine_args.disable_log_stats,
    )
    logger.info(
        "serving model %r (%s, max_model_len=%d, chat template: %s) at http://%s:%d/v1",
        config.served_model_names[0],
        config.model_root,
        engine.max_model_len,
        "--chat-template" if chat_template else "the model's own",
        args.host,
        args.port,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, log_level=args.uvicorn_log_level)
    )
    try:
        server.run()
    finally:
        engine.shutdown()  # also when uvicorn never started (port taken)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m rsllm.serve [flags]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_arg_parser()
    args = parser.parse_args(argv)
    run_server(args, explicit_dests(parser, argv), parser)


if __name__ == "__main__":
    main()
