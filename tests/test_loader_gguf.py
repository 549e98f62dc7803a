"""GGUF loading against independent references: transformers' own GGUF loader, gguf's
numpy dequantizers, and the original weights a tiny GGUF was written from."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from rsllm.model.dequant import dequantize
from rsllm.model.gguf_file import GGUFFile
from rsllm.model.gguf_tokenizer import cached_tokenizer_path
from rsllm.model.loader import load_model

Q = GGMLQuantizationType

TEXTS = [
    "Hello world! The year 2024 cost $3.50, i.e. 1234567 units.",
    "  leading spaces\n\n\ttabs and\r\nCRLF   trailing  ",
    "emoji 😀👍🏽🇫🇷 and 日本語のテキスト, 中文字符, 한국어 문장",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 🐍\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    "I'm sure you're right; we'll see. DON'T SHOUT. Ünïcödé façade naïve café",
    '<repo_name>org/repo<file_sep>main.rs\nfn main() { println!("{}", 1 + 2); }<|endoftext|>',
    "",
]


@pytest.fixture(scope="session")
def transformers_default_state_dict(default_model_path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        default_model_path.parent, gguf_file=default_model_path.name, dtype=torch.float32
    )
    return model.state_dict()


@pytest.mark.slow
def test_default_model_equals_transformers_gguf_load(
    default_model, transformers_default_state_dict
):
    ref = transformers_default_state_dict
    mine = default_model.state_dict
    assert default_model.hf_config["tie_word_embeddings"] is True
    # Tied embeddings: transformers lists lm_head.weight, the checkpoint does not.
    assert set(ref) == set(mine) | {"lm_head.weight"}
    for name, tensor in mine.items():
        assert tensor.dtype == torch.float32, name
        assert torch.equal(tensor, ref[name]), name
    assert torch.equal(mine["model.embed_tokens.weight"], ref["lm_head.weight"])


def test_default_model_config_and_metadata(default_model):
    config = default_model.hf_config
    expected = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    assert {k: config[k] for k in expected} == expected
    assert config["rms_norm_eps"] == pytest.approx(1e-5)
    assert default_model.served_model_name == "SmolLM2-135M-Instruct"
    assert default_model.special_tokens == {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
    }
    assert default_model.generation_config["eos_token_id"] == 2
    assert "<|im_start|>" in default_model.chat_template
    assert default_model.model_path.endswith(".gguf")
    assert len(default_model.state_dict) == 272


@pytest.fixture(scope="session")
def transformers_default_tokenizer(default_model_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        default_model_path.parent, gguf_file=default_model_path.name
    )


@pytest.mark.parametrize("text", TEXTS)
def test_default_tokenizer_matches_transformers(
    default_model, transformers_default_tokenizer, text
):
    from tokenizers import Tokenizer

    mine = Tokenizer.from_file(default_model.tokenizer_path)
    ref = transformers_default_tokenizer
    ids = mine.encode(text).ids
    assert ids == ref.encode(text)
    for skip in (False, True):
        assert mine.decode(ids, skip_special_tokens=skip) == ref.decode(
            ids, skip_special_tokens=skip
        )
    assert mine.get_vocab_size() == len(ref) == 49152


def test_tokenizer_conversion_is_cached(default_model_path, tmp_path):
    meta = GGUFFile(default_model_path).metadata
    first = cached_tokenizer_path(default_model_path, meta, tmp_path)
    mtime = first.stat().st_mtime_ns
    second = cached_tokenizer_path(default_model_path, meta, tmp_path)
    assert first == second and second.stat().st_mtime_ns == mtime
    assert first.is_relative_to(tmp_path)


def test_cache_dir_honours_xdg_cache_home(default_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    loaded = load_model(str(default_model_path), load_format="dummy")
    assert Path(loaded.tokenizer_path).is_relative_to(tmp_path / "rsllm")


@pytest.mark.slow  # gguf.GGUFReader takes seconds on a 49k-token vocabulary
def test_header_reader_matches_gguf_reader(default_model_path):
    """Our struct-based header reader against gguf's own (slow) reader."""
    mine = GGUFFile(default_model_path)
    ref = gguf.GGUFReader(default_model_path)
    for key, field in ref.fields.items():
        if not key.startswith("GGUF."):
            assert mine.metadata[key] == field.contents(), key
    assert [t.name for t in ref.tensors] == list(mine.tensors)
    for t in ref.tensors[:20]:
        info = mine.tensors[t.name]
        assert info.qtype == t.tensor_type
        assert info.shape == tuple(int(d) for d in reversed(t.shape))
        raw = mine.raw(info)
        assert np.array_equal(raw.reshape(-1), t.data.reshape(-1).view(np.uint8))


# A tiny Llama in each quantization type: row lengths are multiples of 256 (K-quants).
TINY = {"hidden": 256, "inter": 512, "heads": 4, "kv_heads": 2, "layers": 2, "vocab": 96}


def _llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    # What llama.cpp's converter does to q_proj/k_proj rows (written here independently).
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _random_blocks(shape: tuple[int, ...], qtype: GGMLQuantizationType, rng) -> np.ndarray:
    """Random K-quant blocks (gguf has no K-quant quantizer) with sane fp16 scales."""
    block, size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape)) // block
    blocks = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    # Byte offsets of the fp16 super-block scales: Q4_K d,dmin at 0; Q6_K d at the end.
    offsets = {Q.Q4_K: (0, 2), Q.Q6_K: (size - 2,)}[qtype]
    scales = rng.uniform(1e-4, 1e-3, size=(n, len(offsets))).astype(np.float16).view(np.uint8)
    for i, off in enumerate(offsets):
        blocks[:, off : off + 2] = scales[:, 2 * i : 2 * i + 2]
    return blocks.reshape(*shape[:-1], shape[-1] // block * size)


def _write_tiny_gguf(
    path: Path, qtype: GGMLQuantizationType, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write a tiny Llama GGUF with every matrix in `qtype`; returns the float32 weights
    under HF names (before quantization and before llama.cpp's permutation)."""
    rng = np.random.default_rng(seed)
    t = TINY
    hd = t["hidden"] // t["heads"]
    shapes = {
        "token_embd.weight": (t["vocab"], t["hidden"]),
        "output.weight": (t["vocab"], t["hidden"]),
    }
    names = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight"}
    for i in range(t["layers"]):
        for g, hf, shape in (
            ("attn_q", "self_attn.q_proj", (t["heads"] * hd, t["hidden"])),
            ("attn_k", "self_attn.k_proj", (t["kv_heads"] * hd, t["hidden"])),
            ("attn_v", "self_attn.v_proj", (t["kv_heads"] * hd, t["hidden"])),
            ("attn_output", "self_attn.o_proj", (t["hidden"], t["heads"] * hd)),
            ("ffn_gate", "mlp.gate_proj", (t["inter"], t["hidden"])),
            ("ffn_up", "mlp.up_proj", (t["inter"], t["hidden"])),
            ("ffn_down", "mlp.down_proj", (t["hidden"], t["inter"])),
        ):
            shapes[f"blk.{i}.{g}.weight"] = shape
            names[f"blk.{i}.{g}.weight"] = f"model.layers.{i}.{hf}.weight"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(t["layers"])
    writer.add_context_length(256)
    writer.add_embedding_length(t["hidden"])
    writer.add_feed_forward_length(t["inter"])
    writer.add_head_count(t["heads"])
    writer.add_head_count_kv(t["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(t["vocab"])
    originals: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        w = rng.standard_normal(shape, dtype=np.float32) * 0.05
        originals[names[name]] = w
        if ".attn_q." in name:
            w = _llama_cpp_permute(w, t["heads"])
        elif ".attn_k." in name:
            w = _llama_cpp_permute(w, t["kv_heads"])
        if qtype == Q.F32:
            writer.add_tensor(name, w)
        elif qtype == Q.F16:
            writer.add_tensor(name, w.astype(np.float16))
        elif qtype in (Q.Q4_K, Q.Q6_K):
            writer.add_tensor(name, _random_blocks(shape, qtype, rng), raw_dtype=qtype)
        else:
            writer.add_tensor(name, gguf_quantize(w, qtype), raw_dtype=qtype)
    for i in range(t["layers"]):
        for g, hf in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            w = rng.uniform(0.5, 1.5, size=(t["hidden"],)).astype(np.float32)
            writer.add_tensor(f"blk.{i}.{g}.weight", w)
            originals[f"model.layers.{i}.{hf}.weight"] = w
    w = rng.uniform(0.5, 1.5, size=(t["hidden"],)).astype(np.float32)
    writer.add_tensor("output_norm.weight", w)
    originals["model.norm.weight"] = w
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return originals


QTYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q4_K, Q.Q6_K]


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_tiny_gguf_dequantizes_like_gguf_and_transformers(tmp_path, qtype):
    from transformers import AutoModelForCausalLM

    path = tmp_path / f"tiny-{qtype.name}.gguf"
    originals = _write_tiny_gguf(path, qtype)
    loaded = load_model(str(path))
    assert loaded.served_model_name == f"tiny-{qtype.name}"
    assert loaded.hf_config["tie_word_embeddings"] is False
    assert set(loaded.state_dict) == set(originals)

    # Every tensor's bytes decode exactly as gguf's reference numpy code decodes them.
    file = GGUFFile(path)
    for info in file.tensors.values():
        raw = file.raw(info)
        ref = torch.from_numpy(np.ascontiguousarray(gguf_dequantize(raw, info.qtype)))
        assert torch.equal(dequantize(raw, info.qtype, info.shape), ref.reshape(info.shape))

    # Lossless types give back the original weights: the Q/K permutation is undone.
    if qtype in (Q.F32, Q.F16):
        for name, w in originals.items():
            expect = torch.from_numpy(w if qtype == Q.F32 or w.ndim == 1 else w.astype(np.float16))
            assert torch.equal(loaded.state_dict[name], expect.float()), name

    # transformers' independent GGUF loader agrees tensor for tensor.
    ref_model = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    )
    ref_sd = ref_model.state_dict()
    assert set(ref_sd) == set(loaded.state_dict)
    for name, tensor in loaded.state_dict.items():
        assert torch.equal(tensor, ref_sd[name]), name


def test_gguf_dtype_cast(tmp_path):
    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(path, Q.Q8_0)
    full = load_model(str(path)).state_dict
    half = load_model(str(path), dtype=torch.bfloat16).state_dict
    for name, tensor in half.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, full[name].to(torch.bfloat16))
