"""The grammar engine (xgrammar): tokenizer info, compiler, and compiling one request's
`StructuredOutputsParams` into a grammar.

Why xgrammar: it is maintained (vLLM's default), runs on the CPU, and on the default
model's 49k vocabulary compiles a JSON schema in ~15 ms and fills 32 rows of token
masks in ~1.4 ms per step (benches/structured.py measures the end-to-end cost).
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from typing import TYPE_CHECKING, Any

from rsllm.errors import InvalidRequestError
from rsllm.sampling_params import StructuredOutputsParams

if TYPE_CHECKING:
    import xgrammar as xgr

    from rsllm.tokenizer import Tokenizer

# xgrammar's C++ errors start with "[hh:mm:ss] /path/file.cc:123: "; the rest is the message.
_CPP_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError:  # pragma: no cover - xgrammar is the optional `structured` extra
        raise InvalidRequestError(
            "structured outputs need xgrammar: pip install 'rsllm[structured]'"
        ) from None
    return xgrammar


def engine_message(exc: BaseException) -> str:
    """xgrammar's error text without its source-location prefix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _CPP_PREFIX.sub("", text)
    return text.replace("Check failed: (error.empty()) is false: ", "")


def _choice_regex(choices: list[str]) -> str:
    return "(" + "|".join(re.escape(c) for c in choices) + ")"


class GrammarBackend:
    """One compiler for the model's tokenizer; compiled grammars are cached by xgrammar."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        tokenizer_path: str,
        vocab_size: int,
        stop_token_ids: list[int],
        max_threads: int = 2,
    ) -> None:
        self._tokenizer = tokenizer
        self._tokenizer_path = tokenizer_path
        self.vocab_size = vocab_size
        self._stop_token_ids = list(stop_token_ids)
        self._max_threads = max_threads

    @cached_property
    def tokenizer_info(self) -> xgr.TokenizerInfo:
        xgr = _xgrammar()
        with open(self._tokenizer_path, encoding="utf-8") as f:
            meta = xgr.TokenizerInfo._detect_metadata_from_hf(f.read())
        core = self._tokenizer.core
        # Ids the tokenizer does not define (a padded embedding) get an empty string,
        # which xgrammar never allows.
        vocab = [core.id_to_token(i) or "" for i in range(core.vocab_size)]
        return xgr.TokenizerInfo(
            vocab,
            meta["vocab_type"],
            vocab_size=self.vocab_size,
            stop_token_ids=self._stop_token_ids,
            add_prefix_space=meta["add_prefix_space"],
        )

    @cached_property
    def compiler(self) -> xgr.GrammarCompiler:
        xgr = _xgrammar()
        return xgr.GrammarCompiler(self.tokenizer_info, max_threads=self._max_threads)

    def compile(self, params: StructuredOutputsParams) -> xgr.CompiledGrammar:
        """The grammar of `params`; a schema, regex or grammar that does not compile is an
        `InvalidRequestError` with the engine's message."""
        c = self.compiler
        try:
            if params.json is not None:
                schema = params.json if isinstance(params.json, str) else json.dumps(params.json)
                # Compact JSON: with free whitespace small models at temperature 1 can
                # emit blanks until max_tokens.
                return c.compile_json_schema(schema, any_whitespace=False)
            if params.json_object:
                return c.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if params.regex is not None:
                return c.compile_regex(params.regex)
            if params.choice is not None:
                return c.compile_regex(_choice_regex(params.choice))
            assert params.grammar is not None
            return self._compile_grammar(params.grammar)
        except InvalidRequestError:
            raise
        except (RuntimeError, ValueError, TypeError) as exc:
            kind = next(
                k for k in ("json", "json_object", "regex", "choice", "grammar")
                if getattr(params, k) not in (None, False)
            )  # fmt: skip
            raise InvalidRequestError(
                f"invalid structured output {kind}: {engine_message(exc)}"
            ) from None

    def _compile_grammar(self, grammar: str) -> xgr.CompiledGrammar:
        # vLLM accepts EBNF (GBNF-style `root ::= ...`) and Lark (`start: ...`).
        try:
            return self.compiler.compile_grammar(grammar)
        except RuntimeError as ebnf_error:
            if "::=" in grammar:
                raise
            try:
                return self.compiler.compile_lark(grammar)
            except RuntimeError:
                raise ebnf_error from None

    def matcher(self, grammar: xgr.CompiledGrammar) -> xgr.GrammarMatcher:
        return _xgrammar().GrammarMatcher(grammar)
