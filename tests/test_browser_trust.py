"""Hostile uploads, concurrent sessions and closed tabs, in a real browser (issue 5).

Playwright drives Debian's Chromium against `streamlit run app.py`, as in test_browser.py:
- a bundle whose model.pt is a pickle payload is refused with one plain message, the payload
  never runs, and the app goes on working; so is a zip with an entry climbing out of it;
- three sessions (separate browser contexts) purify three different models at the same time,
  each ending with its own model and its own results;
- closing a tab stops its training thread: the Runner logs one line when its session is gone.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from bench.server import CHROMIUM
from tests.defaults import marked_by_default
from tests.test_browser import (
    click_when_idle,
    goto_page,
    metric_value,
    no_exceptions,
    running_app,
)
from tests.test_trust import bundle_files, payload_bytes, write_zip

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium")

VIEWPORT = {"width": 1400, "height": 1000}
GONE = "stopped: its session went away"  # ui.runs.Runner's log line when a run's session is gone


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, log path): this module reads the server's log."""
    with running_app(tmp_path_factory) as served:
        yield served


def open_app(browser, url: str):
    """A new session: its own browser context (cookies, websocket), on the Model page once it has drawn."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(url)
    page.get_by_role("heading", name="Where the model looks").wait_for(timeout=120_000)
    return context, page


def sidebar_metric(page, label: str) -> str:
    box = page.locator('[data-testid="stSidebar"] [data-testid="stMetric"]').filter(has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text()


def percent(text: str) -> float:
    return float(text.strip().rstrip("%"))


def upload_and_load(page, path: Path) -> str:
    """Upload ``path`` through the Model page's uploader, press Load; returns the error box's text."""
    from playwright.sync_api import expect

    main = page.locator('[data-testid="stMain"]')
    # the model's uploader (the page also has one for the defender's own clean images)
    uploader = main.locator('[data-testid="stFileUploader"]').filter(has_text="Model file")
    if not uploader.is_visible():
        main.get_by_text("Upload your own model").click()
    uploader.locator('input[type="file"]').set_input_files(str(path))
    main.get_by_text(path.name).wait_for(timeout=30_000)  # the uploader lists the file
    alert = main.locator('[data-testid="stAlert"]').filter(has_text="This file cannot be used")
    expect(alert).to_have_count(0, timeout=30_000)  # the rerun after the upload drops an earlier error
    main.get_by_role("button", name="Load this model").click()
    alert.wait_for(timeout=60_000)
    return alert.inner_text().strip()


# ---------------------------------------------------------------- hostile uploads


def test_hostile_uploads_are_refused_and_the_app_goes_on(server, browser, tmp_path):
    from playwright.sync_api import expect

    url, _ = server
    marker = tmp_path / "pwned"
    files = bundle_files("mnist-badnets")
    evil = {
        "meta.json": files["meta.json"],
        "trigger.safetensors": files["trigger.safetensors"],
        "model.pt": payload_bytes(marker),
    }
    payload_zip = write_zip(tmp_path / "evil-model.zip", evil)
    slip_zip = write_zip(tmp_path / "slip-model.zip", {"../" + name: data for name, data in files.items()})
    meta_zip = write_zip(tmp_path / "meta-model.zip", {**files, "meta.json": b'{"format_version": 1, "architecture": '})

    context, page = open_app(browser, url)
    sidebar = page.locator('[data-testid="stSidebar"]')
    accuracy = sidebar_metric(page, "Clean accuracy")

    # a pickle payload as model.pt: refused unread, in one sentence, and the payload never ran
    message = upload_and_load(page, payload_zip)
    assert "model.pt was refused" in message and "not a plain state dict of tensors" in message, message
    assert "nothing in it was run" in message, message
    assert "\n" not in message and "Traceback" not in message, message
    assert not marker.exists()
    no_exceptions(page)

    # the app goes on: same model in the sidebar, the model page and the others still draw
    expect(sidebar).to_contain_text("mnist-badnets")
    assert sidebar_metric(page, "Clean accuracy") == accuracy
    assert percent(sidebar_metric(page, "Attack success")) > 90
    assert metric_value(page, "Attack success rate") == "100.0%"
    goto_page(page, "Threshold", "Choose the purification threshold")
    assert metric_value(page, "Marked neurons").startswith(marked_by_default())
    no_exceptions(page)

    # a valid bundle whose entries climb out of the archive, then a truncated meta.json
    goto_page(page, "Model", "The backdoored model")
    message = upload_and_load(page, slip_zip)
    assert "the archive entry '../meta.json' points outside the bundle; refused" in message or re.search(
        r"entry '\.\./[\w.]+' points outside the bundle; refused", message
    ), message
    no_exceptions(page)
    message = upload_and_load(page, meta_zip)
    assert "meta.json is not valid JSON" in message and "\n" not in message, message
    no_exceptions(page)

    expect(sidebar).to_contain_text("mnist-badnets")
    assert "(uploaded)" not in page.locator('[data-testid="stMain"]').inner_text()  # nothing was added
    assert not marker.exists()
    context.close()


# ---------------------------------------------------------------- concurrent sessions


def test_three_sessions_purify_three_models_at_once(server, browser):
    from playwright.sync_api import expect

    url, log_path = server
    names = ["mnist-badnets", "mnist-blend", "mnist-sig"]
    sessions = []
    for name in names:
        context, page = open_app(browser, url)
        main = page.locator('[data-testid="stMain"]')
        sidebar = page.locator('[data-testid="stSidebar"]')
        if name != "mnist-badnets":
            model = main.get_by_role("combobox", name="Model")
            model.click()
            page.get_by_role("option", name=name, exact=True).click()
            expect(sidebar.locator("strong").first).to_have_text(name, timeout=120_000)
            page.get_by_role("heading", name="Where the model looks").wait_for(timeout=120_000)
        expect(sidebar.locator("strong").first).to_have_text(name)
        before = percent(sidebar_metric(page, "Attack success"))
        goto_page(page, "Purify", "Purify the model")
        main.get_by_text(re.compile(r"Marked by .*neurons")).wait_for(timeout=120_000)
        expect(main.get_by_role("combobox", name="Defense")).to_have_value(
            re.compile(r"^nc-ar")
        )  # the recommended defense
        steps = main.get_by_role("spinbutton", name="Steps")
        steps.fill("20")  # nc-ar's ASR falls within 10 steps; what is checked is that each session keeps its own
        steps.press("Enter")
        expect(steps).to_have_value("20")
        main.get_by_text("No run yet").wait_for(timeout=30_000)
        sessions.append((name, context, page, main, sidebar, before))

    for _, _, page, main, _, _ in sessions:  # all three start within a second or so
        click_when_idle(page, main.get_by_role("button", name="Start purification"))
    for _, _, _page, main, _, _ in sessions:
        main.get_by_text(re.compile(r"1\. nc-ar: (step \d+ of 20|preparing…)")).or_(
            main.get_by_role("combobox", name="Run")
        ).first.wait_for(timeout=60_000)

    for name, _context, page, main, sidebar, before in sessions:
        # three trigger reversals and three runs share 2 cores (and the GIL): on a slow machine the first run was at
        # step 5 after 3 minutes; the time it takes is bench/app_load.py's to measure, not this test's
        expect(main.get_by_role("combobox", name="Run")).to_have_value("1. nc-ar (done)", timeout=480_000)
        # the result's attribution maps are drawn after the run, while the other two sessions draw theirs and
        # the background worker measures: on 2 shared cores inside the full suite this took over a minute
        main.get_by_role("button", name="Download purified model (.zip)").wait_for(timeout=180_000)
        expect(sidebar.locator("strong").first).to_have_text(name)  # each session kept its own model
        after = percent(metric_value(page, "Attack success rate"))
        assert after < before, (name, before, after)
        delta = (
            main.locator('[data-testid="stMetric"]')
            .filter(has_text="Attack success rate")
            .locator('[data-testid="stMetricDelta"]')
            .inner_text()
        )
        assert delta.strip().startswith(("-", "−")), (name, delta)
        no_exceptions(page)
        names_shown = sidebar.locator("strong").first.inner_text()
        assert names_shown == name
    assert len({s[0] for s in sessions}) == 3
    for _, context, *_ in sessions:
        context.close()
    assert "Traceback" not in log_path.read_text()


# ---------------------------------------------------------------- closed tabs


def test_closing_the_tab_stops_its_run(server, browser):
    from playwright.sync_api import expect

    url, log_path = server
    context, page = open_app(browser, url)
    main = page.locator('[data-testid="stMain"]')
    goto_page(page, "Purify", "Purify the model")
    defense = main.get_by_role("combobox", name="Defense")
    defense.click()
    page.get_by_role("option", name=re.compile(r"^ft$")).click()
    expect(defense).to_have_value("ft")
    steps = main.get_by_role("spinbutton", name="Steps")
    steps.fill("5000")
    steps.press("Enter")
    expect(steps).to_have_value("5000")
    main.get_by_text("No run yet").wait_for(timeout=30_000)
    click_when_idle(page, main.get_by_role("button", name="Start purification"))
    main.get_by_text(re.compile(r"1\. ft: step \d+ of 5000")).first.wait_for(timeout=60_000)
    offset = len(log_path.read_text())
    assert GONE not in log_path.read_text()

    context.close()  # the tab goes away; its run must stop about ABSENT_S (10 s) later
    closed = time.monotonic()
    line = None
    while time.monotonic() - closed < 45 and line is None:
        time.sleep(0.5)
        line = next((ln for ln in log_path.read_text()[offset:].splitlines() if GONE in ln), None)
    assert line is not None, f"no '{GONE}' line in the server log:\n{log_path.read_text()[-2000:]}"
    assert "'1. ft'" in line, line
    assert time.monotonic() - closed >= 9, "the run stopped before its session had been gone 10 s"


# ---------------------------------------------------------------- shutdown with jobs running (issue 14)


def test_sigterm_stops_the_server_while_a_long_job_runs(browser, tmp_path):
    """A 3,000-unit model's ablation (minutes of work) is running when SIGTERM comes: the server still exits.

    Fails with the old single non-daemon worker (the interpreter waited for the job: over 90 s). The bound
    here is loose for a loaded CI machine; bench/app_load.py measures the seconds (goal: 5).
    """
    import signal
    import subprocess

    from bench.app_load import big_bundle_zip, upload
    from bench.server import free_port, start_server

    big = big_bundle_zip(tmp_path / "wide-3000.zip")
    port = free_port()
    with open(tmp_path / "server.log", "w") as log:
        proc = start_server(port, log, env={"PYTHONWARNINGS": "ignore"}, poll_s=0.2)
        try:
            context, page = open_app(browser, f"http://127.0.0.1:{port}")
            upload(page, big, "wide-3000")
            time.sleep(3)  # its ground truth has started
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            took = time.monotonic() - sent
            context.close()
        except subprocess.TimeoutExpired:
            took = float("inf")
        finally:
            if proc.poll() is None:
                proc.kill()
    assert took < 30, f"the server took {took:.1f} s to stop after SIGTERM"
