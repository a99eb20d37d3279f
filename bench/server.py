"""One `streamlit run app.py` on a free local port, and Chromium's launch settings: shared by the browser
tests (tests/test_browser*.py) and the browser benches (bench/app_speed.py, bench/app_load.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from defense.paths import ROOT

# As `make run` sets it: glibc's per-thread arenas otherwise keep what closed sessions freed (docs/TRUST.md).
ALLOCATOR_ENV = {"MALLOC_ARENA_MAX": "2"}
CHROMIUM = Path("/usr/bin/chromium")  # Debian's Chromium, driven by Playwright
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    port: int,
    log=subprocess.DEVNULL,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    poll_s: float = 0.05,
) -> subprocess.Popen:
    """`streamlit run app.py` on 127.0.0.1:port, its output (stdout and stderr) to ``log``, ``env`` added to
    this process's environment; returns once /_stcore/health answers 200 (checked every ``poll_s`` seconds)."""
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    cmd += ["--server.address", "127.0.0.1", "--server.port", str(port)]
    base = {**ALLOCATOR_ENV, **os.environ}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**base, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(poll_s)
    stop_server(proc)
    raise RuntimeError(f"streamlit did not become healthy within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 10) -> None:
    """Send ``sig`` (SIGINT: Streamlit's own clean shutdown); kill the server if it has not exited in ``wait_s``."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
