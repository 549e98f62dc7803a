"""Start rsllm's server (`python -m rsllm.serve`) on a free local port, wait until
/health answers, and stop it afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def launched_server(args: Sequence[str] = (), startup_timeout_s: float = 600.0) -> Iterator[str]:
    """Yield the base URL (http://127.0.0.1:PORT) of a healthy rsllm server started with
    `args`; on exit it gets SIGTERM (then SIGKILL after 30 s). Its log goes to a temporary
    file, printed if it fails to start."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="rsllm-bench-serve-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "rsllm.serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += [*args, "--disable-log-requests", "--uvicorn-log-level", "warning"]
    process = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"rsllm.serve exited with {process.returncode}:\n{_tail(log.name)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"rsllm.serve not healthy after {startup_timeout_s} s")
            time.sleep(0.5)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        os.unlink(log.name)


def _tail(path: str, lines: int = 40) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
