"""Shared helpers for the tests: the CLI in-process and as a subprocess, copies of bundled models."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "assets" / "models"
sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz_corpus"))  # make_corpus: tiny bundles
# One torch thread per process: the suite shares two cores with other processes (the app's server,
# CLI subprocesses), and oversubscribed torch threads run these small models several times slower.
os.environ.setdefault("BNL_THREADS", "1")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m defense ARGS`` in a fresh interpreter; text stdout/stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "defense", *map(str, args)],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clean_error(code: int, stderr: str) -> str:
    """Exit code 2, exactly one 'error: ...' line on stderr, and no traceback; returns the message."""
    assert code == 2, f"exit code {code}, stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr
    return errors[0].split("error:", 1)[1].strip()


@pytest.fixture
def cli(capsys):
    """Run ``defense.cli.main`` in-process: returns (exit code, stdout, stderr); argparse's exits included."""
    from defense import cli as cli_module

    def run(*args: str):
        try:
            code = cli_module.main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def badnets_copy(tmp_path) -> Path:
    """A private copy of the bundled mnist-badnets model (directory bundle)."""
    return Path(shutil.copytree(MODELS / "mnist-badnets", tmp_path / "mnist-badnets"))


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (to check that nothing was written)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright, for the browser tests (test_browser*.py)."""
    from playwright.sync_api import sync_playwright

    from bench.server import ARGS, CHROMIUM

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(autouse=True)
def fresh_job_board():
    """Each test starts with the app's background jobs of earlier tests stopped and a new job board.

    Every AppTest session has the same session id, so the whole run would share one job queue and one
    worker: a test's quick measurement would wait behind the pruning curves and slow scores that earlier
    tests' pages asked for (minutes on a busy CI machine). Real sessions each have their own queue.
    """
    yield
    jobs = sys.modules.get("ui.jobs")
    if jobs is None:
        return
    jobs.board().stop()
    jobs.board.clear()
    _join_app_threads("bnl-jobs", 10)


def _join_app_threads(prefix: str, seconds: float) -> None:
    import threading
    import time

    deadline = time.monotonic() + seconds
    for t in threading.enumerate():
        if t.name.startswith(prefix):
            t.join(timeout=max(0.0, deadline - time.monotonic()))


def pytest_sessionfinish(session, exitstatus):
    """Stop the app's background work before the interpreter ends.

    AppTest sessions leave the app's job workers and runs (daemon threads) in torch; torch aborts the process
    ("terminate called without an active exception", exit code 134) if the interpreter finalizes under them.
    """
    jobs = sys.modules.get("ui.jobs")
    if jobs is not None:
        try:
            jobs.board().stop()
        except Exception:  # noqa: BLE001 - no board was made in this run
            pass
    _join_app_threads("bnl-", 30)  # a Purify run stops once its session has been gone 10 s
