"""Result files: every benchmark writes one JSON with the machine, the versions, its
parameters and its numbers, so that a number can be read beside where it came from."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
_PACKAGES = ("rsllm", "torch", "transformers", "tokenizers", "numpy", "httpx")


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo; platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: the CPU, how many cores, how busy the machine is."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return info


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["git_commit"] = _git_commit()
    return found


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_result(
    name: str,
    parameters: dict[str, Any],
    results: dict[str, Any],
    out: Path | None = None,
    load_before: list[float] | None = None,
) -> Path:
    """Write `{benchmark, date, machine, versions, parameters, results}` as JSON to `out`
    (default benches/results/NAME.json) and return the path. `load_before` is the load
    average when the run began; the machine's entry carries the one at its end."""
    path = out if out is not None else RESULTS_DIR / f"{name}.json"
    machine = machine_info()
    if load_before is not None:
        machine["load_average_start"] = list(load_before)
    report = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions(),
        "parameters": parameters,
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
