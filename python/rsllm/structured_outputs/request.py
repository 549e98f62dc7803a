"""OpenAI's `response_format` and vLLM's `structured_outputs` request fields, turned into
`StructuredOutputsParams` (the same for chat and completions)."""

from __future__ import annotations

from typing import Any

from rsllm.errors import InvalidRequestError
from rsllm.sampling_params import StructuredOutputsParams

_KINDS = ("json", "regex", "choice", "grammar", "json_object")


def _from_structured_outputs(body: dict[str, Any]) -> StructuredOutputsParams:
    if not isinstance(body, dict):
        raise InvalidRequestError("structured_outputs must be an object")
    # vLLM's tuning flags (disable_any_whitespace, ...) change nothing here.
    values = {k: body[k] for k in _KINDS if body.get(k) is not None}
    json_value = values.get("json")
    if json_value is not None and not isinstance(json_value, dict | str):
        raise InvalidRequestError(
            "structured_outputs.json must be a JSON schema (an object or a string)"
        )
    for key in ("regex", "grammar"):
        if key in values and not isinstance(values[key], str):
            raise InvalidRequestError(f"structured_outputs.{key} must be a string")
    return StructuredOutputsParams(**values)


def _from_response_format(fmt: dict[str, Any]) -> StructuredOutputsParams | None:
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequestError(
                "response_format json_schema needs json_schema.schema (a JSON schema object)"
            )
        return StructuredOutputsParams(json=schema)
    raise InvalidRequestError(
        f"response_format type {kind!r} is not one of 'text', 'json_object', 'json_schema'"
    )


def from_openai_request(
    response_format: dict[str, Any] | None, structured_outputs: dict[str, Any] | None
) -> StructuredOutputsParams | None:
    """The constraint a request asks for, or None. Both fields at once is an error."""
    from_format = _from_response_format(response_format) if response_format else None
    from_so = _from_structured_outputs(structured_outputs) if structured_outputs else None
    if from_format is not None and from_so is not None:
        raise InvalidRequestError("send either response_format or structured_outputs, not both")
    return from_format or from_so
