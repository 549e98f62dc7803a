"""Chat templates: turn an OpenAI-style conversation into the prompt text a model expects.

One renderer for `LLM.chat` and the server. Templates are Hugging Face's Jinja
dialect, rendered in jinja2's *sandboxed* environment (a template can come from a
request) with the variables transformers passes: `messages`, `bos_token`,
`eos_token`, `add_generation_prompt`, `tools`, `raise_exception`, `strftime_now`,
plus any `chat_template_kwargs`. Every failure caused by the template or the
conversation is an `InvalidRequestError` carrying the template's own message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

from rsllm.errors import InvalidRequestError


class _TemplateRaised(InvalidRequestError):
    """What `raise_exception(...)` inside a template raises: its message goes to the user."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(
    value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # transformers' tojson: no HTML escaping (jinja's default would turn < into \u003c).
    return json.dumps(
        value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a template once; a syntax error is an `InvalidRequestError`."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise InvalidRequestError(f"chat template syntax error (line {e.lineno}): {e}") from e


def load_chat_template(value: str | os.PathLike[str] | None) -> str | None:
    """`--chat-template`: a file path, or the template itself written inline."""
    if value is None:
        return None
    text = os.fspath(value)
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            source = f.read()
    elif "{{" in text or "{%" in text:
        source = text
    else:
        raise ValueError(f"chat template {text!r} is neither a file nor a Jinja template")
    compile_chat_template(source)  # fail at start-up, not on the first request
    return source


def _content_text(content: Any, role: str) -> str:
    """A message's content as text: None -> "" (templates concatenate it), text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequestError(
                    f"{role} message: only text content parts are supported, got {kind!r}"
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise InvalidRequestError(f"{role} message: content must be a string or a list of parts")


def _template_tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    # Templates index arguments as a mapping (transformers' convention); the API sends a
    # JSON string. Unparseable arguments stay a string rather than failing the request.
    call = dict(call)
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    call["function"] = function
    return call


def prepare_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages -> the dicts a template sees (text content, tool calls as mappings)."""
    if not messages:
        raise InvalidRequestError("messages must not be empty")
    prepared = []
    for message in messages:
        role = message.get("role")
        if not isinstance(role, str):
            raise InvalidRequestError("every message needs a string role")
        item = {k: v for k, v in message.items() if v is not None}
        item["content"] = _content_text(message.get("content"), role)
        if message.get("tool_calls"):
            item["tool_calls"] = [_template_tool_call(c) for c in message["tool_calls"]]
        prepared.append(item)
    return prepared


def render_chat(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """Render `messages` with the template `source` into the prompt text."""
    if add_generation_prompt and continue_final_message:
        raise InvalidRequestError(
            "continue_final_message and add_generation_prompt cannot both be true"
        )
    prepared = prepare_messages(messages)
    if continue_final_message and prepared[-1]["role"] != "assistant":
        raise InvalidRequestError("continue_final_message needs a final assistant message")
    # The caller's kwargs first, so that the named variables cannot be overridden by them.
    variables: dict[str, Any] = dict(template_kwargs or {})
    variables.update(
        messages=prepared,
        bos_token=bos_token or "",
        eos_token=eos_token or "",
        add_generation_prompt=add_generation_prompt,
        tools=list(tools) if tools else None,
    )
    template = compile_chat_template(source)
    if continue_final_message and not prepared[-1]["content"].strip():
        # Continuing an empty assistant turn is starting one: the generation prompt.
        variables.update(messages=prepared[:-1], add_generation_prompt=True)
        continue_final_message = False
    try:
        text = template.render(**variables)
    except _TemplateRaised:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise InvalidRequestError(f"chat template failed to render: {e}") from e
    if continue_final_message:
        text = _cut_after_final_message(text, prepared[-1]["content"])
    return text


def _cut_after_final_message(text: str, final: str) -> str:
    # Drop what the template appends after the last assistant turn (its end-of-turn
    # marker), so that generation continues the message itself.
    final = final.strip()
    at = text.rfind(final)
    if at < 0:
        raise InvalidRequestError(
            "continue_final_message: the final message's content does not appear in the "
            "rendered prompt"
        )
    return text[: at + len(final)]


__all__ = ["compile_chat_template", "load_chat_template", "prepare_messages", "render_chat"]
