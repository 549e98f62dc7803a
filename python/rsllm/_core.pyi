"""Type stubs for the Rust extension module, checked by `mypy.stubtest`."""

import os
from collections.abc import Sequence
from typing import final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DetokenizerBatch",
    "EngineCore",
    "SchedulerOutput",
    "StepOutput",
    "Tokenizer",
    "__version__",
    "_raise_core_error",
    "argmax_rows",
    "kernel_runtime",
    "linear_row",
    "paged_decode_attention",
    "rms_norm",
    "rope",
    "silu_mul",
    "store_kv",
]

__version__: str

def _raise_core_error(kind: str, message: str) -> None: ...
def paged_decode_attention(
    query: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    key_cache: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    value_cache: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    block_tables: npt.NDArray[np.int32],
    seq_lens: npt.NDArray[np.int32],
    scale: float,
    out: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    dtype: str,
) -> None: ...
def kernel_runtime() -> str: ...
def silu_mul(
    gate_up: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    out: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    dtype: str,
) -> None: ...
def argmax_rows(
    x: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    out: npt.NDArray[np.int64],
    dtype: str,
) -> None: ...
def linear_row(
    x: npt.NDArray[np.uint16],
    weight: npt.NDArray[np.uint16],
    bias: npt.NDArray[np.uint16] | None,
    out: npt.NDArray[np.uint16],
) -> None: ...
def rope(
    qkv: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    cos: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    sin: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    q_out: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    k_out: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    v_out: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    dtype: str,
) -> None: ...
def store_kv(
    key: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    value: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    slots: npt.NDArray[np.int64],
    key_cache: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    value_cache: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    dtype: str,
) -> None: ...
def rms_norm(
    x: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    residual: npt.NDArray[np.float32] | npt.NDArray[np.uint16] | None,
    weight: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    eps: float,
    out: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    dtype: str,
) -> None: ...

@final
class SchedulerOutput:
    """One step's batch: flat numpy arrays (see DESIGN.md) plus request ids.

    R requests, T tokens, S sampling requests, B the longest block table.
    """

    @property
    def input_ids(self) -> npt.NDArray[np.int32]: ...  # [T]
    @property
    def positions(self) -> npt.NDArray[np.int32]: ...  # [T]
    @property
    def slot_mapping(self) -> npt.NDArray[np.int64]: ...  # [T]
    @property
    def query_start_loc(self) -> npt.NDArray[np.int32]: ...  # [R+1]
    @property
    def seq_lens(self) -> npt.NDArray[np.int32]: ...  # [R]
    @property
    def block_tables(self) -> npt.NDArray[np.int32]: ...  # [R, B], padded with 0
    @property
    def logits_indices(self) -> npt.NDArray[np.int32]: ...  # [S]
    @property
    def sampling_mask(self) -> npt.NDArray[np.bool_]: ...  # [R]
    @property
    def num_computed_tokens(self) -> npt.NDArray[np.int32]: ...  # [R], before this step
    @property
    def num_scheduled_tokens(self) -> npt.NDArray[np.int32]: ...  # [R]
    @property
    def num_cached_tokens(self) -> npt.NDArray[np.int32]: ...  # [R], prefix hit at admission
    @property
    def req_ids(self) -> list[str]: ...  # [R]
    @property
    def preempted_req_ids(self) -> list[str]: ...
    @property
    def finished_req_ids(self) -> list[str]: ...  # aborted since the previous step
    @property
    def num_reqs(self) -> int: ...
    @property
    def total_num_scheduled_tokens(self) -> int: ...
    @property
    def max_query_len(self) -> int: ...
    @property
    def max_seq_len(self) -> int: ...

@final
class StepOutput:
    """One request's result of `update`; unpacks like
    `(request_id, token_id, finished, finish_reason, stop_reason)`."""

    @property
    def request_id(self) -> str: ...
    @property
    def token_id(self) -> int: ...
    @property
    def finished(self) -> bool: ...
    @property
    def finish_reason(self) -> str | None: ...  # "stop" | "length"
    @property
    def stop_reason(self) -> int | str | None: ...  # stop string or token id; None for EOS
    @property
    def text(self) -> str: ...  # the text this token made visible
    def __len__(self) -> int: ...
    def __getitem__(self, key: int, /) -> str | int | bool | None: ...

@final
class EngineCore:
    """The scheduler and KV block pool, driven one step at a time."""

    def __new__(
        cls,
        *,
        num_blocks: int,
        block_size: int = 16,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        max_model_len: int = 8192,
        enable_prefix_caching: bool = True,
        enable_chunked_prefill: bool = True,
        policy: str = "fcfs",
        tokenizer: Tokenizer | None = None,
        async_scheduling: bool = False,
    ) -> EngineCore: ...
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int] | npt.NDArray[np.integer],
        *,
        max_tokens: int,
        min_tokens: int = 0,
        eos_token_ids: Sequence[int] = ...,
        stop_token_ids: Sequence[int] = ...,
        ignore_eos: bool = False,
        priority: int = 0,
        cache_salt: str | None = None,
        arrival_time: float | None = None,
        stop: Sequence[str] = ...,
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        detokenize: bool | None = None,
    ) -> None: ...
    def abort_request(self, request_id: str) -> None: ...
    def schedule(self) -> SchedulerOutput: ...
    def update(
        self, sampled_token_ids: Sequence[int] | npt.NDArray[np.integer]
    ) -> list[StepOutput]: ...
    def has_unfinished_requests(self) -> bool: ...
    @property
    def num_unfinished_requests(self) -> int: ...
    @property
    def num_running(self) -> int: ...
    @property
    def num_waiting(self) -> int: ...
    def stats(self) -> dict[str, int | float]: ...
    def get_output_token_ids(self, request_id: str) -> list[int]: ...
    def get_num_computed_tokens(self, request_id: str) -> int: ...
    def _check_invariants(self) -> None: ...

@final
class Tokenizer:
    """A `tokenizer.json` loaded by the Rust `tokenizers` crate."""

    @staticmethod
    def from_file(path: str | os.PathLike[str]) -> Tokenizer: ...
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...
    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = False
    ) -> list[list[int]]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    def token_to_id(self, token: str) -> int | None: ...
    def id_to_token(self, id: int) -> str | None: ...
    @property
    def special_token_ids(self) -> list[int]: ...
    @property
    def added_tokens(self) -> dict[int, tuple[str, bool]]: ...
    @property
    def decoder_kind(self) -> str: ...

@final
class DetokenizerBatch:
    """Per-request incremental detokenizers with stop strings, advanced once per step."""

    def __new__(cls, tokenizer: Tokenizer) -> DetokenizerBatch: ...
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        *,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        min_tokens: int = 0,
    ) -> None: ...
    def step(
        self, updates: list[tuple[str, Sequence[int]]]
    ) -> list[tuple[str, str, str | None]]: ...
    def finish(self, request_id: str) -> str: ...
    def abort_request(self, request_id: str) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, request_id: str, /) -> bool: ...
