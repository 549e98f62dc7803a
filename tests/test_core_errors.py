"""Every core error variant becomes the specific Python exception it promises."""

from __future__ import annotations

import pytest

import rsllm
from rsllm import _core


@pytest.mark.parametrize(
    ("kind", "cls", "builtin"),
    [
        ("invalid_request", rsllm.InvalidRequestError, ValueError),
        ("unknown_request", rsllm.UnknownRequestError, KeyError),
        ("tokenizer", rsllm.TokenizerError, ValueError),
        ("internal", rsllm.EngineCoreError, RuntimeError),
    ],
)
def test_core_error_maps_to_specific_exception(kind, cls, builtin):
    with pytest.raises(cls) as info:
        _core._raise_core_error(kind, "the message")
    assert isinstance(info.value, rsllm.RsllmError)
    assert isinstance(info.value, builtin)
    assert "the message" in str(info.value)


def test_rust_panic_is_an_exception_not_an_abort():
    with pytest.raises(rsllm.EngineCoreError, match="boom"):
        _core._raise_core_error("panic", "boom")


def test_unknown_error_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown error kind"):
        _core._raise_core_error("nope", "x")


def test_version_matches_package():
    assert rsllm.__version__ == "0.1.0"
