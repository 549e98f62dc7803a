"""The server's command line: its own flags beside the engine's, with vLLM's names."""

from __future__ import annotations

import argparse
import json

from rsllm.engine.arg_utils import EngineArgs

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _json_list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError(f"expected a JSON list of strings, e.g. '[\"*\"]': {text}")
    return value


def add_server_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="0.0.0.0", help="Address to listen on.")
    g.add_argument("--port", type=int, default=8000, help="Port to listen on.")
    g.add_argument(
        "--api-key",
        help="Require `Authorization: Bearer KEY` on every /v1/* request (other paths "
        "such as /health and /metrics stay open).",
    )
    g.add_argument(
        "--chat-template",
        help="Chat template: a file path, or the Jinja template itself. Default: the "
        "model's own (tokenizer_config.json, chat_template.jinja or GGUF metadata).",
    )
    g.add_argument(
        "--response-role",
        default="assistant",
        help="Role of the generated message in chat responses.",
    )
    g.add_argument(
        "--allowed-origins",
        type=_json_list,
        default=["*"],
        help="CORS: allowed origins as a JSON list, e.g. '[\"http://localhost:3000\"]'.",
    )
    g.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials.")
    g.add_argument(
        "--uvicorn-log-level", default="info", choices=_LOG_LEVELS, help="uvicorn's log level."
    )
    g.add_argument("--disable-log-requests", action="store_true", help="Do not log each request.")
    g.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help='Allow tool_choice "auto": parse tool calls from the model\'s output with '
        "--tool-call-parser.",
    )
    g.add_argument(
        "--tool-call-parser",
        help="Format of the model's tool calls, for --enable-auto-tool-choice.",
    )
    return parser


def make_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The full command line of the server (server flags, then the engine's)."""
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="python -m rsllm.serve",
            description="rsllm's OpenAI-compatible API server.",
        )
    add_server_args(parser)
    EngineArgs.add_cli_args(parser)
    return parser


def validate_server_args(args: argparse.Namespace) -> None:
    """Cross-flag checks; a `ValueError` is reported as a usage error."""
    from rsllm.entrypoints.openai.tool_parsers import TOOL_PARSERS

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise ValueError("--enable-auto-tool-choice needs --tool-call-parser")
    if args.tool_call_parser is not None and args.tool_call_parser not in TOOL_PARSERS:
        known = ", ".join(sorted(TOOL_PARSERS)) or "none yet"
        raise ValueError(
            f"--tool-call-parser {args.tool_call_parser!r} is not available (available: {known})"
        )
