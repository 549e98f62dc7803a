"""JSON schemas that force a tool call: `tool_choice="required"` and a named function.

"required": a JSON array of one or more `{"name": ..., "parameters": {...}}` objects, each
naming a listed function with arguments that validate against that function's
`parameters` schema (vLLM's format). A named function: the arguments object itself.
"""

from __future__ import annotations

from typing import Any

from rsllm.errors import InvalidRequestError

_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def tool_functions(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The `function` entries of `tools` by name; malformed tools are an
    `InvalidRequestError`."""
    out: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise InvalidRequestError(f"tools[{i}] must be {{'type': 'function', 'function': ...}}")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequestError(f"tools[{i}].function.name must be a non-empty string")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidRequestError(
                f"tools[{i}].function.parameters must be a JSON schema object"
            )
        out[fn["name"]] = fn
    return out


def _parameters(fn: dict[str, Any]) -> dict[str, Any]:
    return fn.get("parameters") or dict(_EMPTY_PARAMETERS)


def required_tools_schema(tools: list[dict[str, Any]], parallel: bool = True) -> dict[str, Any]:
    """An array of calls, each to one of `tools` with valid arguments."""
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [name]},
                "parameters": _parameters(fn),
            },
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for name, fn in tool_functions(tools).items()
    ]
    schema: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
    }
    if not parallel:
        schema["maxItems"] = 1
    return schema


def named_tool_schema(tools: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The arguments schema of the function `name`; an unknown name is an
    `InvalidRequestError` listing the known ones."""
    functions = tool_functions(tools)
    if name not in functions:
        raise InvalidRequestError(
            f"tool_choice names the function {name!r}, which is not in tools "
            f"(known: {', '.join(sorted(functions))})"
        )
    return _parameters(functions[name])
