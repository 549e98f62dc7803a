"""ModelConfig validation and dtype resolution."""

from __future__ import annotations

import pytest
import torch

from rsllm import config as config_module
from rsllm.config import ModelConfig, resolve_dtype


def test_defaults_and_aliases():
    cfg = ModelConfig()
    assert cfg.model is None and cfg.dtype == "auto" and cfg.load_format == "auto"
    assert cfg.override_generation_config == {}
    assert ModelConfig(dtype="half").dtype == "float16"
    assert ModelConfig(dtype="BF16").dtype == "bfloat16"
    assert ModelConfig(dtype="float").dtype == "float32"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dtype", "int8"),
        ("max_model_len", 0),
        ("max_model_len", True),
        ("load_format", "pt"),
        ("seed", -1),
        ("model", ""),
        ("tokenizer", 3),
        ("skip_tokenizer_init", "yes"),
        ("generation_config", ""),
        ("override_generation_config", "temperature=0"),
    ],
)
def test_invalid_field_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError):
        ModelConfig(modle="x")  # type: ignore[call-arg]


def test_max_model_len_from_config():
    hf_config = {"max_position_embeddings": 8192}
    assert ModelConfig().get_max_model_len(hf_config) == 8192
    assert ModelConfig(max_model_len=1024).get_max_model_len(hf_config) == 1024
    with pytest.raises(ValueError, match="max_model_len"):
        ModelConfig(max_model_len=9000).get_max_model_len(hf_config)
    with pytest.raises(ValueError, match="max_model_len"):
        ModelConfig().get_max_model_len({})


def test_resolve_explicit_dtypes():
    assert resolve_dtype("float32", "cpu") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype("half", "cuda") is torch.float16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int4", "cpu")


def test_resolve_auto_on_cpu(monkeypatch):
    monkeypatch.setattr(config_module, "_cpu_has_fast_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") is torch.bfloat16
    assert resolve_dtype("auto", "cpu", checkpoint_dtype="float16") is torch.bfloat16
    # A float32 checkpoint (e.g. a dequantized GGUF) keeps its precision.
    assert resolve_dtype("auto", "cpu", checkpoint_dtype="float32") is torch.float32
    monkeypatch.setattr(config_module, "_cpu_has_fast_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("auto", "cpu", checkpoint_dtype="float16") is torch.float32


def test_cpu_bf16_probe_matches_torch():
    expected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert config_module._cpu_has_fast_bf16() == expected


def test_resolve_auto_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", "cuda:0") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
