"""The server's command line takes vLLM's flags: values land in EngineArgs, no-op flags
warn, values we cannot honour are clear errors, and --help documents every flag."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rsllm.engine.arg_utils import (
    EngineArgs,
    explicit_dests,
    ignored_flag_warnings,
    parse_human_int,
)
from rsllm.entrypoints.openai.cli_args import make_arg_parser, validate_server_args

ISSUE_FLAGS = [
    "--model", "--tokenizer", "--chat-template", "--served-model-name", "--host", "--port",
    "--api-key", "--dtype", "--max-model-len", "--max-num-seqs", "--max-num-batched-tokens",
    "--block-size", "--enable-prefix-caching", "--no-enable-prefix-caching", "--load-format",
    "--seed", "--generation-config", "--response-role", "--uvicorn-log-level",
    "--disable-log-requests", "--override-generation-config", "--allowed-origins",
    "--scheduling-policy", "--kv-cache-memory-bytes", "--tensor-parallel-size",
    "--gpu-memory-utilization", "--enforce-eager", "--trust-remote-code",
    "--enable-chunked-prefill", "--disable-log-stats", "--max-logprobs",
    "--enable-auto-tool-choice", "--tool-call-parser",
]  # fmt: skip


def parse(*argv: str):
    parser = make_arg_parser()
    return parser.parse_args(list(argv)), parser


def test_a_vllm_command_line_maps_onto_engine_args():
    args, _ = parse(
        "--model", "/models/m", "--tokenizer", "/models/t", "--served-model-name", "a", "b",
        "--dtype", "float32", "--max-model-len", "4k", "--max-num-seqs", "8",
        "--max-num-batched-tokens", "512", "--block-size", "32", "--no-enable-prefix-caching",
        "--load-format", "gguf", "--seed", "7", "--generation-config", "vllm",
        "--override-generation-config", '{"max_new_tokens": 5}',
        "--scheduling-policy", "priority", "--kv-cache-memory-bytes", "1G",
    )  # fmt: skip
    e = EngineArgs.from_cli_args(args)
    assert e.model == "/models/m" and e.tokenizer == "/models/t"
    assert e.served_model_name == ["a", "b"]
    assert (e.dtype, e.max_model_len, e.max_num_seqs, e.max_num_batched_tokens) == (
        "float32",
        4000,
        8,
        512,
    )
    assert (e.block_size, e.enable_prefix_caching, e.load_format, e.seed) == (32, False, "gguf", 7)
    assert e.generation_config == "vllm"
    assert e.override_generation_config == {"max_new_tokens": 5}
    assert e.scheduling_policy == "priority"
    assert e.kv_cache_memory_bytes == 2**30


def test_defaults_are_vllms():
    args, _ = parse()
    e = EngineArgs.from_cli_args(args)
    assert e == EngineArgs()
    assert (args.host, args.port, args.response_role, args.allowed_origins) == (
        "0.0.0.0",
        8000,
        "assistant",
        ["*"],
    )
    assert e.model is None and e.max_num_seqs == 256 and e.block_size == 16
    assert e.enable_prefix_caching and e.enable_chunked_prefill and e.tensor_parallel_size == 1


@pytest.mark.parametrize(
    ("text", "value"), [("2048", 2048), ("2k", 2000), ("2K", 2048), ("1.5M", 1572864)]
)
def test_human_readable_integers(text, value):
    assert parse_human_int(text) == value


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tensor_parallel_size": 2}, "tensor_parallel_size"),
        ({"block_size": 24}, "block_size"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"max_model_len": -1}, "max_model_len"),
        ({"dtype": "int3"}, "dtype"),
        ({"scheduling_policy": "lifo"}, "scheduling_policy"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"load_format": "pickle"}, "load_format"),
        ({"served_model_name": []}, "served_model_name"),
    ],
)
def test_invalid_engine_args_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EngineArgs(**kwargs)


def test_unknown_engine_args_are_a_type_error():
    with pytest.raises(TypeError):
        EngineArgs(no_such_field=1)  # type: ignore[call-arg]


def test_no_op_flags_warn_only_when_given():
    argv = ["--tensor-parallel-size", "1", "--enforce-eager", "--trust-remote-code"]
    argv += ["--enable-chunked-prefill", "--gpu-memory-utilization=0.8"]
    args, parser = parse(*argv)
    given = explicit_dests(parser, argv)
    warnings = ignored_flag_warnings(EngineArgs.from_cli_args(args), given, cuda_available=False)
    joined = "\n".join(warnings)
    for flag in (
        "--tensor-parallel-size",
        "--enforce-eager",
        "--trust-remote-code",
        "--enable-chunked-prefill",
        "--gpu-memory-utilization",
    ):
        assert flag in joined
    plain, parser = parse()
    assert ignored_flag_warnings(EngineArgs.from_cli_args(plain), set(), cuda_available=False) == []


def test_server_flag_checks():
    args, _ = parse("--enable-auto-tool-choice")
    with pytest.raises(ValueError, match="--tool-call-parser"):
        validate_server_args(args)
    args, _ = parse("--enable-auto-tool-choice", "--tool-call-parser", "nope")
    with pytest.raises(ValueError, match="not available"):
        validate_server_args(args)
    with pytest.raises(SystemExit):
        parse("--allowed-origins", "not json")


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=120, check=False
    )


def test_help_documents_every_flag():
    for entry in (["-m", "rsllm.serve"], ["-m", "rsllm.entrypoints.openai.api_server"]):
        out = run_cli(*entry, "--help")
        assert out.returncode == 0, out.stderr
        for flag in ISSUE_FLAGS:
            assert flag in out.stdout, flag
    serve = run_cli("-m", "rsllm.cli", "serve", "--help")
    assert (
        serve.returncode == 0 and "model_tag" in serve.stdout and "--max-model-len" in serve.stdout
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-m", "rsllm.serve", "--tensor-parallel-size", "2"], "tensor_parallel_size=2"),
        (["-m", "rsllm.serve", "--chat-template", "/no/such/file.jinja"], "chat template"),
        (["-m", "rsllm.serve", "--max-model-len", "lots"], "--max-model-len"),
        (["-m", "rsllm.cli", "serve", "m1", "--model", "m2"], "the model is given twice"),
    ],
)
def test_bad_command_lines_fail_before_loading_anything(argv, message):
    out = run_cli(*argv)
    assert out.returncode == 2
    assert message in out.stderr
