"""The wheel is real: `maturin build --release` gives one abi3 wheel that carries every
Python module, the stub, the extension and the shipped model configs, and that
installs into a fresh venv where `rsllm._core` imports."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "rsllm"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # The shared target directory keeps the release build incremental.
    env = {
        **os.environ,
        "CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")),
    }
    maturin = Path(sys.executable).parent / "maturin"
    subprocess.run(
        [str(maturin), "build", "--release", "--quiet", "--out", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=600,
    )
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_is_abi3_and_complete(wheel):
    name, version, python_tag, abi_tag, _platform = wheel.stem.split("-")
    assert (name, version) == ("rsllm", "0.1.0")
    assert (python_tag, abi_tag) == ("cp310", "abi3")

    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        p.relative_to(PACKAGE.parent).as_posix()
        for p in PACKAGE.rglob("*")
        if p.suffix in (".py", ".pyi", ".json") or p.name == "py.typed"
        if "__pycache__" not in p.parts
    }
    assert "rsllm/py.typed" in sources and "rsllm/_core.pyi" in sources
    assert "rsllm/model/configs/llama-3-8b/config.json" in sources
    assert sources - names == set()
    assert any(n.startswith("rsllm/_core") and n.endswith(".so") for n in names)
    assert not any("__pycache__" in n for n in names)


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        env=env,
        check=True,
        timeout=300,
    )
    # Only the core and the pure-Python helpers that need no dependency are imported:
    # the venv has none of torch & co.
    script = (
        "import rsllm, rsllm._core\n"
        "from rsllm.model.model_path import shipped_configs\n"
        "print(rsllm.__file__)\n"
        "print(rsllm.__version__)\n"
        "print(' '.join(shipped_configs()))\n"
    )
    result = subprocess.run(
        [str(python), "-c", script],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    location, version, configs = result.stdout.splitlines()
    assert Path(location).is_relative_to(env_dir)
    assert version == "0.1.0"
    assert {"llama-3-8b", "qwen2.5-7b", "tiny-llama"} <= set(configs.split())
