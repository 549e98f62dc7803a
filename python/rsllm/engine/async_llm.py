"""`AsyncLLM`: the engine loop on its own thread, feeding asyncio consumers.

The loop thread is the only one that touches the `LLMEngine` (and so the Rust core and
the model). Consumers talk to it through a command queue; outputs come back through
each request's asyncio queue via `call_soon_threadsafe`. With no work the thread
sleeps on an event (no busy spinning). If a step raises, every waiting request fails
with `EngineDeadError` and the engine reports itself dead instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from rsllm.engine.arg_utils import EngineArgs
from rsllm.engine.llm_engine import LLMEngine
from rsllm.errors import EngineDeadError, InvalidRequestError
from rsllm.outputs import RequestOutput
from rsllm.sampling_params import SamplingParams
from rsllm.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]

    def put(self, item: RequestOutput | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            pass  # the consumer's loop is closed; nobody is listening any more


class AsyncLLM:
    """The engine for the server: `generate` is an async iterator of `RequestOutput`."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._dead: BaseException | None = None
        self._stopping = False
        self._stats: dict[str, Any] = engine.get_stats()
        self._thread = threading.Thread(target=self._run, name="rsllm-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> AsyncLLM:
        return cls(LLMEngine(args))

    # -- what the server reads ----------------------------------------------------------
    @property
    def served_model_name(self) -> str:
        return self.engine.served_model_name

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def model_path(self) -> str:
        return self.engine.loaded.model_path

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.engine.tokenizer

    @property
    def default_sampling_params(self) -> dict[str, Any]:
        return dict(self.engine.default_sampling_params)

    @property
    def errored(self) -> bool:
        return self._dead is not None

    @property
    def dead_error(self) -> BaseException | None:
        return self._dead

    def get_stats(self) -> dict[str, Any]:
        """The engine's counters as of the last step (read without touching the core)."""
        return dict(self._stats)

    # -- requests -----------------------------------------------------------------------
    async def generate(
        self,
        prompt: dict[str, Any] | str,
        sampling_params: SamplingParams,
        request_id: str,
        *,
        priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs as the engine produces them. Invalid input
        raises `InvalidRequestError`; leaving the iteration early aborts the request."""
        self._check_alive()
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._send("add", request_id, prompt, sampling_params, priority, stream)
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self._send("abort", request_id)

    async def abort(self, request_id: str) -> None:
        self._send("abort", request_id)

    def shutdown(self) -> None:
        self._stopping = True
        self._wakeup.set()
        self._thread.join(timeout=30)

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine is dead: {self._dead!r}")

    def _send(self, *command: Any) -> None:
        self._commands.put(command)
        self._wakeup.set()
        if self._dead is not None:
            # The loop is gone: nobody will drain this command, so fail it here.
            self._fail_pending(EngineDeadError(f"the engine is dead: {self._dead!r}"))

    # -- the loop thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._wakeup.clear()
                if self._drain_commands():
                    self._stats = self.engine.get_stats()
                if not self.engine.has_unfinished_requests():
                    self._wakeup.wait()
                    continue
                for out in self.engine.step():
                    stream = self._streams.get(out.request_id)
                    if stream is not None:
                        stream.put(out)
                        if out.finished:
                            del self._streams[out.request_id]
                self._stats = self.engine.get_stats()
        except BaseException as exc:  # a Rust panic (PanicException) is a BaseException too
            logger.exception("the engine loop died")
            self._dead = exc
            dead = EngineDeadError(f"the engine loop died: {exc!r}")
            for stream in self._streams.values():
                stream.put(dead)
            self._streams.clear()
            self._fail_pending(dead)

    def _drain_commands(self) -> bool:
        """Apply queued adds and aborts; True if there were any."""
        drained = False
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return drained
            drained = True
            if command[0] == "add":
                _, request_id, prompt, params, priority, stream = command
                try:
                    self.engine.add_request(request_id, prompt, params, priority=priority)
                except (InvalidRequestError, ValueError, TypeError) as exc:
                    stream.put(exc)
                    continue
                self._streams[request_id] = stream
            elif command[0] == "abort":
                request_id = command[1]
                self.engine.abort_request(request_id)
                self._streams.pop(request_id, None)

    def _fail_pending(self, error: BaseException) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                command[-1].put(error)
