"""A Hugging Face model directory: config, safetensors weights and tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from rsllm.errors import ModelLoadError

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json of a directory, checked for a supported architecture."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelLoadError(
            f"{model_dir} has no config.json: a model directory needs the Hugging Face "
            "layout (config.json, *.safetensors, tokenizer.json), or pass a .gguf file"
        )
    config = read_json(path)
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    check_architecture(config, str(path))
    quant = config.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else quant
        raise ModelLoadError(
            f"{path}: quantized checkpoints ({method!r}) are not supported; "
            "use an unquantized checkpoint or a GGUF file"
        )
    return config


def check_architecture(config: dict[str, Any], where: str) -> None:
    archs = config.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ModelLoadError(
            f"{where}: architecture {archs or config.get('model_type')!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index} has no weight_map")
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(
                f"{model_dir}: shards named in {index.name} are missing: {missing}"
            )
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(
            p.name for p in model_dir.glob("*.pt")
        )
        hint = f" (found {other}: pickled weights are not loaded, convert them)" if other else ""
        raise ModelLoadError(
            f"{model_dir} has no *.safetensors weights{hint}; "
            "use load_format='dummy' for random weights"
        )
    return files


def load_state_dict(model_dir: Path, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's safetensors files, on the CPU."""
    out: dict[str, torch.Tensor] = {}
    for path in _weight_files(model_dir):
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    tensor = f.get_tensor(name)
                    out[name] = tensor if dtype is None else tensor.to(dtype)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ModelLoadError(
                f"cannot read {path}: {e} (the file may be truncated or corrupt)"
            ) from None
    return out


def _token_content(value: Any) -> str | None:
    # tokenizer_config.json writes a special token as a string or an AddedToken dict.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def tokenizer_info(tokenizer_dir: Path) -> tuple[str | None, dict[str, str | None], str | None]:
    """(tokenizer.json path, special token strings, chat template) of a directory."""
    tok_json = tokenizer_dir / "tokenizer.json"
    tok_config_path = tokenizer_dir / "tokenizer_config.json"
    tok_config = read_json(tok_config_path) if tok_config_path.is_file() else {}
    specials_map_path = tokenizer_dir / "special_tokens_map.json"
    specials_map = read_json(specials_map_path) if specials_map_path.is_file() else {}
    specials = {
        name: _token_content(tok_config.get(name)) or _token_content(specials_map.get(name))
        for name in _SPECIAL_NAMES
    }
    chat_template = None
    jinja = tokenizer_dir / "chat_template.jinja"
    if jinja.is_file():
        chat_template = jinja.read_text(encoding="utf-8")
    else:
        template = tok_config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str):
            chat_template = template
    return (str(tok_json) if tok_json.is_file() else None), specials, chat_template


def generation_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "generation_config.json"
    return read_json(path) if path.is_file() else {}
