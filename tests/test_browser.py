"""The app in a real browser: Playwright drives Debian's Chromium against `streamlit run app.py`.

Walks every page by clicking the sidebar, moves the threshold slider with the keyboard, runs a
short purification to the end, starts a second one and stops it, and saves screenshots to
docs/screenshots/ (model.png, salience.png, threshold.png, purify.png).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "docs" / "screenshots"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log) -> subprocess.Popen:
    """`streamlit run app.py` on 127.0.0.1:port; returns once /_stcore/health answers."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("streamlit did not become healthy within 60 s")


@contextlib.contextmanager
def running_app(tmp_path_factory):
    """(url, log path) of a private `streamlit run app.py`; its log must hold no traceback when it stops."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    with open(log_path, "w") as log:
        proc = start_server(port, log)
        try:
            yield f"http://127.0.0.1:{port}", log_path
        finally:
            proc.send_signal(signal.SIGINT)  # Streamlit's own clean shutdown (SIGTERM waits on open sessions)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory) as (url, _):
        yield url


def goto_page(page, link: str, heading: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(link, exact=True).click()
    page.get_by_role("heading", name=heading).wait_for(timeout=60_000)


def no_exceptions(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]'
    ).first.inner_text()


def shoot(page, name: str, height: int = 2400) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its own container, so grow the window."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": height})
    page.mouse.move(5, height - 5)  # no hover tooltips or plotly toolbars in the picture
    page.wait_for_timeout(800)  # let plotly finish drawing
    page.screenshot(path=str(SHOTS / name))
    page.set_viewport_size({"width": 1400, "height": 1000})


def metric_value(page, label: str) -> str:
    box = page.locator('[data-testid="stMain"] [data-testid="stMetric"]').filter(has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text()


def test_every_page_in_a_browser(server, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    main = page.locator('[data-testid="stMain"]')
    page.goto(server)

    # Model page (the default): sidebar, numbers, samples, attribution
    page.get_by_role("heading", name="Where the model looks").wait_for(timeout=90_000)
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert "mnist-badnets" in sidebar.inner_text()
    assert "Attack success" in sidebar.inner_text()
    assert metric_value(page, "Attack success rate") == "100.0%"
    page.wait_for_function("document.querySelectorAll('[data-testid=\"stMain\"] .js-plotly-plot').length >= 2")
    no_exceptions(page)
    shoot(page, "model.png")

    # Salience: heatmaps at once, ground truth (scatter, ROC) once measured
    goto_page(page, "Neuron salience", "Which neurons look infected?")
    assert "mnist-badnets" in sidebar.inner_text()  # the sidebar is on every page
    main.get_by_text("finding infected neurons: ROC").wait_for(timeout=120_000)
    assert main.get_by_text(re.compile(r"benign salience \(AUC [01]\.\d\d\)")).count() >= 1
    no_exceptions(page)
    shoot(page, "salience.png", height=2900)

    # Threshold: the slider moves the mask and the preview
    goto_page(page, "Threshold", "Choose the purification threshold")
    before = metric_value(page, "Marked neurons")
    assert before.startswith("56 of 112")
    thumb = main.locator('[data-testid="stSlider"] input[type="range"]').first  # the thumb's keyboard handle
    thumb.focus()
    for _ in range(4):
        page.keyboard.press("ArrowLeft")
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="stMetric"]')]
        .some(m => m.innerText.includes('Marked neurons') && m.innerText.includes('34 of 112'))""",
        timeout=60_000,
    )
    assert float(thumb.input_value()) == pytest.approx(0.3)
    main.get_by_text("your choice").wait_for(timeout=120_000)  # the pruning curve with the choice marked
    no_exceptions(page)
    shoot(page, "threshold.png", height=1500)

    # Purify: the threshold survived the page switch; a long baseline run stopped, then bs-ar run to the end
    goto_page(page, "Purify", "Purify the model")
    main.get_by_text(re.compile(r"34 of 112 neurons")).wait_for(timeout=60_000)
    steps = main.get_by_role("spinbutton", name="Steps")

    def set_steps(n: int) -> None:
        steps.fill(str(n))
        steps.press("Enter")
        expect(steps).to_have_value(str(n))
        page.wait_for_timeout(500)

    defense = main.get_by_role("combobox", name="Defense")
    defense.click()
    page.get_by_role("option", name=re.compile(r"^ft: ")).click()
    expect(defense).to_have_value(re.compile(r"^ft: "))
    set_steps(2000)
    main.get_by_role("button", name="Start purification").click()
    main.get_by_text(re.compile(r"1\. ft: step \d+ of 2000")).first.wait_for(timeout=60_000)
    page.wait_for_timeout(2500)  # a few curve updates
    clicked = time.monotonic()
    main.get_by_role("button", name="Stop").click()
    main.get_by_role("button", name="Start purification").and_(main.locator(":enabled")).wait_for(timeout=30_000)
    assert (
        time.monotonic() - clicked < 20
    )  # stopped, not run out: 2000 steps take over a minute (timing: bench/app_speed.py)
    expect(main.get_by_role("combobox", name="Run")).to_have_value("1. ft (stopped)", timeout=30_000)

    defense.click()
    page.get_by_role("option", name=re.compile(r"^bs-ar: ")).click()
    set_steps(60)
    main.get_by_role("button", name="Start purification").click()
    main.get_by_text(re.compile(r"2\. bs-ar: step \d+ of 60")).first.wait_for(timeout=60_000)
    expect(main.get_by_role("combobox", name="Run")).to_have_value("2. bs-ar (done)", timeout=120_000)
    main.get_by_role("button", name="Download purified model (.zip)").wait_for(timeout=30_000)
    asr_after = float(metric_value(page, "Attack success rate").rstrip("%"))
    assert asr_after < 90, asr_after
    no_exceptions(page)
    shoot(page, "purify.png", height=2000)
    page.close()


def test_fresh_session_starts_on_the_default_model(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server + "/threshold")
    page.get_by_role("heading", name="Choose the purification threshold").wait_for(timeout=60_000)
    assert metric_value(page, "Marked neurons").startswith("56 of 112")  # the other session's slider is its own
    no_exceptions(page)
    page.close()
