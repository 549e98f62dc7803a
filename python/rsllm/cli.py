"""The `rsllm` console script: `rsllm serve [MODEL] [flags]`, as `vllm serve`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rsllm.engine.arg_utils import explicit_dests
from rsllm.entrypoints.openai.cli_args import make_arg_parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="rsllm", description="rsllm: LLM inference engine.")
    parser.add_argument("--version", action="store_true", help="Print the version and exit.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="Start the OpenAI-compatible server.",
        description="Start the OpenAI-compatible server (vLLM's flags).",
    )
    serve.add_argument("model_tag", nargs="?", help="The model to serve (the same as --model).")
    make_arg_parser(serve)
    args = parser.parse_args(argv)
    if args.version:
        from rsllm import __version__

        print(__version__)
        return
    if args.command != "serve":
        parser.print_help()
        raise SystemExit(2)
    if args.model_tag is not None:
        if args.model is not None and args.model != args.model_tag:
            serve.error(f"the model is given twice: {args.model_tag!r} and --model {args.model!r}")
        args.model = args.model_tag
    from rsllm.entrypoints.openai.api_server import run_server

    run_server(args, explicit_dests(serve, argv[1:]), serve)


if __name__ == "__main__":
    main()
