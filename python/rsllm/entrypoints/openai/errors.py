"""One table from exception to HTTP status, and OpenAI-shaped error bodies.

Every error leaves the server as `{"error": {"message", "type", "param", "code"}}` with
its real status: the openai SDK picks its exception class from the status and its
message from `error`, and AutoGen reads the JSON body of a 400.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rsllm.entrypoints.openai.protocol import ErrorInfo, ErrorResponse
from rsllm.errors import (
    EngineDeadError,
    InvalidRequestError,
    RsllmError,
    TokenizerError,
    UnknownRequestError,
)

logger = logging.getLogger("rsllm.serve")


class ModelNotFoundError(RsllmError, LookupError):
    """A request names a model this server does not serve (HTTP 404)."""


class UnsupportedFeatureError(InvalidRequestError):
    """A well-formed request for something this server does not do yet (HTTP 400)."""


_TYPE_BY_STATUS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}

# Most specific first: the first class that matches decides the status.
_STATUS_BY_EXCEPTION: list[tuple[type[BaseException], int]] = [
    (ModelNotFoundError, 404),
    (UnknownRequestError, 404),
    (EngineDeadError, 503),
    (InvalidRequestError, 400),
    (TokenizerError, 400),
    (ValueError, 400),
]


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorInfo(
            message=message,
            type=_TYPE_BY_STATUS.get(status, HTTPStatus(status).phrase.replace(" ", "")),
            param=param,
            code=status,
        )
    )
    return JSONResponse(body.model_dump(), status_code=status)


def status_of(exc: BaseException) -> int:
    for cls, status in _STATUS_BY_EXCEPTION:
        if isinstance(exc, cls):
            return status
    return 500


def exception_response(exc: BaseException) -> JSONResponse:
    status = status_of(exc)
    if status == 500:
        # A bug, not the caller's fault: keep the traceback, hide the details.
        logger.error("internal error", exc_info=exc)
        return error_response(500, f"internal server error: {type(exc).__name__}")
    return error_response(status, str(exc), getattr(exc, "param", None))


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    # FastAPI answers 422 by default; the OpenAI API (and its clients) expect 400.
    errors = list(exc.errors())
    parts, param = [], None
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            parts.append(f"malformed JSON body: {err.get('ctx', {}).get('error', err['msg'])}")
            continue
        where = ".".join(loc)
        param = param or where or None
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return error_response(400, "; ".join(parts) or "invalid request body", param)


def install_error_handlers(app: FastAPI) -> None:
    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation_response(exc)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, str(exc.detail))

    async def on_error(_: Request, exc: Exception) -> JSONResponse:
        return exception_response(exc)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    # Expected errors are answered where they are raised; `Exception` is the last resort
    # (Starlette answers it, then re-raises so that uvicorn logs the bug).
    app.add_exception_handler(RsllmError, on_error)
    app.add_exception_handler(ValueError, on_error)
    app.add_exception_handler(Exception, on_error)
