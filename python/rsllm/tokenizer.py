"""The tokenizer as the engine and the server see it.

Encoding and decoding run in the Rust core (`rsllm._core.Tokenizer`, the `tokenizers`
crate); this wrapper only adds what a chat template needs: the special tokens'
strings and the model's own template.
"""

from __future__ import annotations

from collections.abc import Sequence

from rsllm import _core
from rsllm.errors import TokenizerError


class Tokenizer:
    """A `tokenizer.json` loaded in the core, plus the model's special tokens."""

    def __init__(
        self,
        core: _core.Tokenizer,
        special_tokens: dict[str, str | None],
        chat_template: str | None,
    ) -> None:
        self.core = core
        self.special_tokens = dict(special_tokens)
        self.chat_template = chat_template

    @classmethod
    def from_file(
        cls,
        path: str,
        special_tokens: dict[str, str | None] | None = None,
        chat_template: str | None = None,
    ) -> Tokenizer:
        return cls(_core.Tokenizer.from_file(path), special_tokens or {}, chat_template)

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def vocab_size(self) -> int:
        return self.core.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.core.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode str, got {type(text).__name__}")
        return self.core.encode(text, add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.core.decode(list(ids), skip_special_tokens)
