"""What a chat request's `tools`, `tool_choice`, `response_format` and `structured_outputs`
ask for: the tools the template sees, the decoding constraint, and the parser that turns
the output back into `tool_calls`.

- "none" (or no tools): no tools in the template, plain text out.
- "auto" (also tools without tool_choice): the model's own format, parsed with
  `--tool-call-parser`; both `--enable-auto-tool-choice` and the parser are needed.
- "required" / a named function: decoding is constrained to a well-formed call (see
  `rsllm.structured_outputs.tool_schema`), so any model produces valid calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rsllm.entrypoints.openai.tool_parsers.base import ToolParser
from rsllm.entrypoints.openai.tool_parsers.forced import NamedToolParser, RequiredToolParser
from rsllm.entrypoints.openai.tool_parsers.registry import TOOL_PARSERS
from rsllm.errors import InvalidRequestError
from rsllm.sampling_params import StructuredOutputsParams
from rsllm.structured_outputs import (
    from_openai_request,
    named_tool_schema,
    required_tools_schema,
)
from rsllm.structured_outputs.tool_schema import tool_functions


@dataclass
class ToolPlan:
    template_tools: list[dict[str, Any]] | None = None
    structured_outputs: StructuredOutputsParams | None = None
    mode: str = "none"  # "none" | "auto" | "required" | "named"
    parser_name: str | None = None
    function_name: str | None = None
    keep_special_tokens: bool = False  # the parser's markers are special tokens

    def new_parser(self, tokenizer: Any = None) -> ToolParser | None:
        """A fresh parser for one choice (parsers remember what they streamed)."""
        if self.mode == "required":
            return RequiredToolParser()
        if self.mode == "named":
            assert self.function_name is not None
            return NamedToolParser(self.function_name)
        if self.mode == "auto" and self.parser_name is not None:
            return TOOL_PARSERS[self.parser_name](tokenizer)
        return None


def _named_choice(choice: dict[str, Any]) -> str:
    fn = choice.get("function") if choice.get("type", "function") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(
            'tool_choice must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}'
        )
    return name


def _special_markers(parser: type[ToolParser], tokenizer: Any) -> bool:
    core = getattr(tokenizer, "core", None)
    if core is None:
        return False
    special = {text for text, is_special in core.added_tokens.values() if is_special}
    return any(m in special for m in parser.markers)


def plan_tools(
    *,
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    parallel_tool_calls: bool | None,
    response_format: dict[str, Any] | None,
    structured_outputs: dict[str, Any] | None,
    enable_auto_tool_choice: bool,
    tool_call_parser: str | None,
    tokenizer: Any = None,
) -> ToolPlan:
    """Check a chat request's tool and format fields; bad input is an
    `InvalidRequestError` (HTTP 400) that says what to change."""
    constraint = from_openai_request(response_format, structured_outputs)
    if tool_choice is not None and not tools:
        raise InvalidRequestError("tool_choice is set, but the request has no tools")
    if not tools:
        return ToolPlan(structured_outputs=constraint)
    tool_functions(tools)  # shape check, whatever the choice
    if tool_choice == "none":
        return ToolPlan(structured_outputs=constraint)
    if tool_choice is None or tool_choice == "auto":
        if not (enable_auto_tool_choice and tool_call_parser):
            raise InvalidRequestError(
                '"auto" tool choice (the default when tools are given) requires the server '
                "to be started with --enable-auto-tool-choice and --tool-call-parser NAME "
                f"(one of: {', '.join(sorted(TOOL_PARSERS))}); or send tool_choice "
                '"required", "none" or a named function'
            )
        parser = TOOL_PARSERS[tool_call_parser]
        return ToolPlan(
            template_tools=tools,
            structured_outputs=constraint,
            mode="auto",
            parser_name=tool_call_parser,
            keep_special_tokens=_special_markers(parser, tokenizer),
        )
    if constraint is not None:
        raise InvalidRequestError(
            "a forced tool_choice constrains the output itself: drop response_format / "
            'structured_outputs, or use tool_choice "auto"'
        )
    if tool_choice == "required":
        schema = required_tools_schema(tools, parallel=parallel_tool_calls is not False)
        return ToolPlan(
            template_tools=tools,
            structured_outputs=StructuredOutputsParams(json=schema),
            mode="required",
        )
    if isinstance(tool_choice, dict):
        name = _named_choice(tool_choice)
        return ToolPlan(
            template_tools=tools,
            structured_outputs=StructuredOutputsParams(json=named_tool_schema(tools, name)),
            mode="named",
            function_name=name,
        )
    raise InvalidRequestError(
        f'tool_choice {tool_choice!r} is not "none", "auto", "required" or a named function'
    )
