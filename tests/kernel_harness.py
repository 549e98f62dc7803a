"""Where the kernel tests run: on a GPU, under Triton's interpreter, or in a child.

Triton reads TRITON_INTERPRET when a kernel is decorated, so the variable must be set
before the kernel modules are imported, and must not leak into other test modules.
On a machine without CUDA the test module therefore runs itself once more, in a child
`pytest` with TRITON_INTERPRET=1, and each test here reports its own outcome there. With
CUDA (the GPU script) or with TRITON_INTERPRET=1 already set, the tests run in place.
Kernel modules are imported inside the test bodies, never at module level.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

_REPO = Path(__file__).resolve().parent.parent
# One child run per test module: file -> {test name: (outcome, message)}.
_CHILD_RESULTS: dict[str, dict[str, tuple[str, str]]] = {}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _fix_interpreter_index() -> None:
    """Triton 3.6's interpreter turns a scalar into an int with int(array of shape (1,)),
    which numpy >= 2.4 refuses, so `range(start, end)` over loaded bounds fails
    (triton-lang/triton#9171, fixed upstream by #9172). Apply the same fix here."""
    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is None or getattr(patch_tensor, "_rsllm_fixed", False):
        return

    def patched(tensor: type, scope: interpreter._LangPatchScope) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._rsllm_fixed = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patched


if _interpreting() and importlib.util.find_spec("triton") is not None:
    _fix_interpreter_index()


def _run_child(module_file: str) -> dict[str, tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        env = dict(os.environ, TRITON_INTERPRET="1")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                module_file,
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={report}",
            ],
            cwd=_REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if not report.exists():
            raise RuntimeError(
                f"interpreter child produced no report:\n{proc.stdout}\n{proc.stderr}"
            )
        results: dict[str, tuple[str, str]] = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = tag
                    message = (node.get("message") or "") + "\n" + (node.text or "")
                    break
            results[case.get("name", "")] = (outcome, message)
        return results


def device_or_delegate(request: pytest.FixtureRequest) -> torch.device | None:
    """The device to test on in this process, or None when a child already ran the test.

    In the None case the child's outcome has been asserted here: a failure there fails
    this test with the child's message, a skip there skips it.
    """
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    if torch.cuda.is_available() and not _interpreting():
        return torch.device("cuda")
    if _interpreting():
        return torch.device("cpu")
    module_file = str(request.path)
    if module_file not in _CHILD_RESULTS:
        _CHILD_RESULTS[module_file] = _run_child(module_file)
    name = request.node.name
    outcome, message = _CHILD_RESULTS[module_file].get(name, ("missing", "not run in the child"))
    if outcome == "skipped":
        pytest.skip(message.strip())
    if outcome != "passed":
        pytest.fail(f"under TRITON_INTERPRET=1: {outcome}\n{message}", pytrace=False)
    return None


def supports(device: torch.device, dtype: torch.dtype) -> bool:
    """The interpreter's bf16 dot is wrong: bf16 is checked on a GPU only."""
    return dtype != torch.bfloat16 or device.type == "cuda"


TOLERANCE = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
