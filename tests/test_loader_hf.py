"""Hugging Face directories, dummy weights, shipped configs and the hub cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rsllm.model.dummy import dummy_state_dict, param_shapes
from rsllm.model.loader import load_model
from rsllm.model.model_path import CONFIGS_DIR, shipped_configs


def _saved_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_tiny_llama_round_trip(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    loaded = load_model(str(tiny_llama_dir))
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).state_dict()
    assert set(loaded.state_dict) == set(_saved_tensors(tiny_llama_dir))
    # Tied embeddings: the checkpoint has no lm_head.weight; transformers shares it.
    assert set(ref) == set(loaded.state_dict) | {"lm_head.weight"}
    for name, tensor in loaded.state_dict.items():
        assert torch.equal(tensor, ref[name]), name
    assert loaded.hf_config["architectures"] == ["LlamaForCausalLM"]
    assert loaded.hf_config["num_key_value_heads"] == 2
    assert loaded.served_model_name == tiny_llama_dir.name
    assert loaded.model_path == str(tiny_llama_dir)
    assert loaded.generation_config["eos_token_id"] == 2
    assert loaded.special_tokens["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in loaded.chat_template
    assert Path(loaded.tokenizer_path) == tiny_llama_dir / "tokenizer.json"


def test_untied_and_cast(tiny_llama_builder):
    model_dir = tiny_llama_builder(tie_word_embeddings=False)
    loaded = load_model(str(model_dir), dtype=torch.bfloat16)
    saved = _saved_tensors(model_dir)
    assert "lm_head.weight" in loaded.state_dict
    for name, tensor in loaded.state_dict.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, saved[name].to(torch.bfloat16))


def test_sharded_checkpoint_loads(tiny_llama_builder):
    whole = load_model(str(tiny_llama_builder(seed=1))).state_dict
    sharded_dir = tiny_llama_builder(seed=1, max_shard_size="1MB")
    index = json.loads((sharded_dir / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    sharded = load_model(str(sharded_dir)).state_dict
    assert set(sharded) == set(whole)
    for name, tensor in whole.items():
        assert torch.equal(sharded[name], tensor), name


def test_chat_template_file_and_named_templates(tiny_llama_dir, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, model_dir)
    config_path = model_dir / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["chat_template"] = [
        {"name": "tool_use", "template": "TOOLS"},
        {"name": "default", "template": "DEFAULT"},
    ]
    tok_config["bos_token"] = {"content": "<|im_start|>", "lstrip": False}
    config_path.write_text(json.dumps(tok_config))
    loaded = load_model(str(model_dir), load_format="dummy")
    assert loaded.chat_template == "DEFAULT"
    assert loaded.special_tokens["bos_token"] == "<|im_start|>"
    (model_dir / "chat_template.jinja").write_text("FROM FILE")
    assert load_model(str(model_dir), load_format="dummy").chat_template == "FROM FILE"


def test_tokenizer_override_and_skip(tiny_llama_dir, default_model_path):
    loaded = load_model(str(tiny_llama_dir), tokenizer=str(default_model_path))
    assert loaded.tokenizer_path.endswith("tokenizer.json")
    assert Path(loaded.tokenizer_path).parent != tiny_llama_dir
    assert loaded.special_tokens["bos_token"] == "<|im_start|>"
    skipped = load_model(str(tiny_llama_dir), load_format="dummy", skip_tokenizer_init=True)
    assert skipped.tokenizer_path is None
    assert skipped.state_dict == {}


@pytest.mark.parametrize(
    ("cls_name", "overrides"),
    [
        ("LlamaConfig", {"tie_word_embeddings": True}),
        ("LlamaConfig", {"tie_word_embeddings": False, "head_dim": 32}),
        ("MistralConfig", {}),
        ("Qwen2Config", {}),
        ("Qwen3Config", {"head_dim": 32}),
    ],
)
def test_dummy_weights_have_transformers_shapes(cls_name, overrides):
    import transformers

    config = getattr(transformers, cls_name)(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **overrides,
    )
    model = transformers.AutoModelForCausalLM.from_config(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    hf_config = config.to_dict()
    if hf_config.get("tie_word_embeddings"):
        expected.pop("lm_head.weight")
    assert param_shapes(hf_config) == expected
    weights = dummy_state_dict(hf_config, torch.float16, "cpu", seed=3)
    assert {n: tuple(t.shape) for n, t in weights.items()} == expected
    assert all(t.dtype == torch.float16 for t in weights.values())
    again = dummy_state_dict(hf_config, torch.float16, "cpu", seed=3)
    assert all(torch.equal(weights[n], again[n]) for n in weights)
    other = dummy_state_dict(hf_config, torch.float16, "cpu", seed=4)
    assert not torch.equal(weights["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_shipped_configs_load_as_dummy():
    names = shipped_configs()
    assert {"llama-3-8b", "qwen2.5-7b", "tiny-llama"} <= set(names)
    for name in names:
        loaded = load_model(name, load_format="dummy")
        assert loaded.served_model_name == name
        assert loaded.state_dict == {}
        assert loaded.tokenizer_path is None
        assert loaded.hf_config == json.loads((CONFIGS_DIR / name / "config.json").read_text())
    big = load_model("llama-3-8b", load_format="dummy").hf_config
    n_params = sum(int(torch.Size(s).numel()) for s in param_shapes(big).values())
    assert 8.0e9 < n_params < 8.1e9  # Llama-3-8B has 8.03B parameters
    qwen = load_model("qwen2.5-7b", load_format="dummy").hf_config
    n_params = sum(int(torch.Size(s).numel()) for s in param_shapes(qwen).values())
    assert 7.6e9 < n_params < 7.7e9  # Qwen2.5-7B has 7.62B parameters
    # The directory itself works too.
    assert load_model(str(CONFIGS_DIR / "tiny-llama"), load_format="dummy").hf_config["hidden_size"]


def test_default_model_as_dummy_and_gguf_directory(default_model_path):
    loaded = load_model(None, load_format="dummy")
    assert loaded.state_dict == {}
    assert loaded.served_model_name == "SmolLM2-135M-Instruct"
    assert loaded.hf_config["num_hidden_layers"] == 30
    # A directory without config.json and exactly one .gguf (a GGUF hub repo) is that file.
    in_dir = load_model(str(default_model_path.parent), load_format="dummy")
    assert in_dir.model_path == str(default_model_path)


def _fake_hub_cache(root: Path, hub_id: str, source: Path, commit: str) -> Path:
    repo = root / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_id_found_in_local_cache(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = _fake_hub_cache(tmp_path, "org/tiny-llama", tiny_llama_dir, commit)
    loaded = load_model("org/tiny-llama")
    assert loaded.served_model_name == "org/tiny-llama"
    assert loaded.model_path == str(snapshot)
    assert torch.equal(
        loaded.state_dict["model.norm.weight"],
        load_model(str(tiny_llama_dir)).state_dict["model.norm.weight"],
    )
    assert load_model("org/tiny-llama", revision=commit, load_format="dummy").model_path == str(
        snapshot
    )
    # HF_HOME/hub is the fallback when HF_HUB_CACHE is unset.
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path.parent / "nowhere"))
    with pytest.raises(ValueError, match="downloads nothing"):
        load_model("org/tiny-llama")
