"""`ToolParser`: finds tool calls in generated text, finished or streamed.

Each format implements `scan(text, final)`: the content outside the calls that may be
shown, and the calls written so far (name once known, raw arguments that only grow).
Everything else is shared: turning a finished text into `tool_calls`, and turning a
stream into deltas where each call's id, type and name go out once, in its first
delta, followed by argument fragments (clients concatenate all of them across deltas).
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from typing import Any

from rsllm.entrypoints.openai.protocol import (
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
    random_id,
)
from rsllm.entrypoints.openai.tool_parsers.partial_json import PartialCall


@dataclass
class ExtractedToolCalls:
    """What a parser found in a finished output: the calls and the text beside them."""

    tools_called: bool
    tool_calls: list[ToolCall] = field(default_factory=list)
    content: str | None = None


@dataclass
class Scan:
    content: str
    calls: list[PartialCall]


def held_prefix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that starts `marker` (text to hold back in
    a stream: it may still become the marker)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def normalized_arguments(raw: str) -> str | None:
    """The arguments as a JSON object string, or None if they are not a JSON object."""
    try:
        value = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    return json.dumps(value, ensure_ascii=False)


class ToolParser(abc.ABC):
    """One model family's tool-call format. One instance per choice of a request: it
    remembers what it has streamed."""

    # Strings that must survive detokenization (special tokens in some tokenizers).
    markers: tuple[str, ...] = ()

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self._sent_content = 0
        self._sent: list[tuple[str, int]] = []  # per streamed call: (id, arguments sent)

    @abc.abstractmethod
    def scan(self, text: str, final: bool) -> Scan:
        """Content and calls in `text`; unless `final`, hold back what may still turn
        into a call."""

    # -- a finished output ---------------------------------------------------------------
    def extract_tool_calls(
        self, text: str, tools: list[dict[str, Any]] | None = None
    ) -> ExtractedToolCalls:
        """The calls in a complete output. If any call is unfinished or its arguments are
        not a JSON object, nothing is a call and the whole text is content."""
        scan = self.scan(text, final=True)
        if not scan.calls:
            return ExtractedToolCalls(tools_called=False, content=text)
        calls = []
        for call in scan.calls:
            args = normalized_arguments(call.arguments) if call.complete else None
            if call.name is None or args is None:
                return ExtractedToolCalls(tools_called=False, content=text)
            calls.append(
                ToolCall(
                    id=random_id("chatcmpl-tool"),
                    function=FunctionCall(name=call.name, arguments=args),
                )
            )
        content = scan.content if scan.content.strip() else None
        return ExtractedToolCalls(tools_called=bool(calls), tool_calls=calls, content=content)

    # -- a stream ------------------------------------------------------------------------
    @property
    def tools_called(self) -> bool:
        """Whether a call has been streamed."""
        return bool(self._sent)

    def extract_tool_calls_streaming(
        self, previous_text: str, delta_text: str
    ) -> DeltaMessage | None:
        """The delta to send now that `delta_text` follows `previous_text` (None: nothing
        to send yet)."""
        return self._delta(self.scan(previous_text + delta_text, final=False))

    def finish_streaming(self, text: str) -> DeltaMessage | None:
        """What is still held back once the whole `text` is out. Without a call, all
        of the text is content (a marker that never became a call included)."""
        if not self._sent and not any(c.name for c in self.scan(text, final=True).calls):
            rest = text[self._sent_content :]
            self._sent_content = len(text)
            return DeltaMessage(content=rest) if rest else None
        return self._delta(self.scan(text, final=True))

    def _delta(self, scan: Scan) -> DeltaMessage | None:
        content = scan.content[self._sent_content :]
        self._sent_content = max(self._sent_content, len(scan.content))
        deltas: list[DeltaToolCall] = []
        for index, call in enumerate(scan.calls):
            if call.name is None:
                break  # calls go out in order: wait for this one's name
            if index == len(self._sent):
                call_id = random_id("chatcmpl-tool")
                self._sent.append((call_id, 0))
                deltas.append(
                    DeltaToolCall(
                        index=index,
                        id=call_id,
                        type="function",
                        function={"name": call.name, "arguments": ""},
                    )
                )
            call_id, sent = self._sent[index]
            fragment = call.arguments[sent:]
            if fragment:
                self._sent[index] = (call_id, len(call.arguments))
                deltas.append(DeltaToolCall(index=index, function={"arguments": fragment}))
        if not content and not deltas:
            return None
        return DeltaMessage(content=content or None, tool_calls=_merge(deltas) or None)


def _merge(deltas: list[DeltaToolCall]) -> list[DeltaToolCall]:
    """One entry per call index in a delta (a header and its first fragment together)."""
    merged: dict[int, DeltaToolCall] = {}
    for d in deltas:
        first = merged.get(d.index)
        if first is None:
            merged[d.index] = d
        else:
            fn = dict(first.function or {})
            fn["arguments"] = fn.get("arguments", "") + (d.function or {}).get("arguments", "")
            first.function = fn
    return list(merged.values())
