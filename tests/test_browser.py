"""The app in a real browser: Playwright drives Debian's Chromium against `streamlit run app.py`.

Walks every page by clicking the sidebar, moves the threshold slider with the keyboard, runs a
short purification to the end, starts a second one and stops it, and saves screenshots to
docs/screenshots/ (model.png, salience.png, threshold.png, purify.png).
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from pathlib import Path

import pytest

from bench.app_speed import idle
from bench.server import CHROMIUM, free_port, start_server, stop_server
from defense.purify import PurifyConfig
from tests.defaults import marked_by_default, marked_count
from ui.lab import SLIDER_STEP

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "docs" / "screenshots"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium")


@contextlib.contextmanager
def running_app(tmp_path_factory):
    """(url, log path) of a private `streamlit run app.py`; its log must hold no traceback when it stops.

    Its results cache is its own (an empty folder), so what a page shows never depends on earlier runs."""
    port = free_port()
    folder = tmp_path_factory.mktemp("streamlit")
    log_path = folder / "server.log"
    with open(log_path, "w") as log:
        env = {"PYTHONWARNINGS": "ignore", "BNL_CACHE": str(folder / "cache")}
        proc = start_server(port, log, env=env, poll_s=0.2)
        try:
            yield f"http://127.0.0.1:{port}", log_path
        finally:
            stop_server(proc, signal.SIGINT)  # Streamlit's own clean shutdown (SIGTERM waits on open sessions)
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory) as (url, _):
        yield url


def goto_page(page, link: str, heading: str) -> None:
    nav = page.locator('[data-testid="stSidebarNav"]')  # the lesson's steps are numbered: "2. Neuron salience"
    nav.get_by_text(re.compile(rf"^(\d+\. )?{re.escape(link)}$")).click()
    page.get_by_role("heading", name=heading).wait_for(timeout=60_000)


def click_when_idle(page, button) -> None:
    """Click once the script run the last widget change asked for is over.

    A click that lands while that run redraws the page can hit an element being replaced and be lost (Streamlit's
    own end-to-end tests wait the same way); the short pause lets the run begin before its end is awaited.
    """
    page.wait_for_timeout(300)
    idle(page)
    button.click()


def no_exceptions(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]'
    ).first.inner_text()


def shoot(page, name: str, height: int = 2400) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its own container, so grow the window."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": height})
    page.mouse.move(5, height - 5)  # no hover tooltips or plotly toolbars in the picture
    page.wait_for_timeout(800)  # let plotly finish drawing
    page.screenshot(path=str(SHOTS / name))
    page.set_viewport_size(size)


def view_shot(page, name: str) -> None:
    """What the class sees: the viewport only, as it is now."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    page.mouse.move(size["width"] - 5, size["height"] - 5)
    page.wait_for_timeout(700)
    page.screenshot(path=str(SHOTS / name))


def metric_value(page, label: str) -> str:
    box = page.locator('[data-testid="stMain"] [data-testid="stMetric"]').filter(has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text()


def keyed(key: str) -> str:
    """The CSS selector of the element with Streamlit key ``key`` (its class: st-key-KEY, odd characters as -)."""
    return f'[class~="st-key-{re.sub(r"[^a-zA-Z0-9_-]", "-", key)}"]'


def chart_box(page, key: str) -> dict | None:
    """The chart's bounding box; a live chart is redrawn every poll, and a box read while its element is
    being replaced comes back None, so the read is retried on the new element."""
    chart = page.locator(f"{keyed(key)} .js-plotly-plot").first
    for _ in range(20):
        chart.wait_for(state="visible", timeout=30_000)
        box = chart.bounding_box()
        if box is not None:
            return box
        page.wait_for_timeout(250)
    return None


def assert_in_view(page, box: dict | None, what: str) -> None:
    """``box`` (a bounding box) lies wholly inside the viewport, without scrolling."""
    size = page.viewport_size
    assert box is not None, what
    inside = box["y"] >= 0 and box["x"] >= 0 and box["y"] + box["height"] <= size["height"] + 1
    assert inside and box["x"] + box["width"] <= size["width"] + 1, f"{what} not in view: {box} in {size}"


# every outline (a plotly shape named "marked") against the pixel bounds of its own cell, from the axes' scales
OUTLINES_JS = """(key) => {
  const gd = document.querySelector(`[class~="st-key-${key.replace(/[^a-zA-Z0-9_-]/g, "-")}"] .js-plotly-plot`)
    || document.querySelector(`[class~="st-key-${key}"] .js-plotly-plot`);
  if (!gd || !gd._fullLayout) return {error: "no chart " + key};
  const svg = gd.querySelector('.main-svg').getBoundingClientRect();
  const shapes = gd._fullLayout.shapes || [];
  const out = [];
  shapes.forEach((s, k) => {
    if (s.name !== "marked") return;
    const path = gd.querySelector(`.shapelayer path[data-index="${k}"]`);
    if (!path) { out.push({k, missing: true}); return; }
    const b = path.getBoundingClientRect();
    const xa = gd._fullLayout[s.xref.replace("x", "xaxis")], ya = gd._fullLayout[s.yref.replace("y", "yaxis")];
    const col = Math.round((s.x0 + s.x1) / 2), row = Math.round((s.y0 + s.y1) / 2);
    const xs = [xa.l2p(col - 0.5), xa.l2p(col + 0.5)].map(v => v + xa._offset + svg.left);
    const ys = [ya.l2p(row - 0.5), ya.l2p(row + 0.5)].map(v => v + ya._offset + svg.top);
    out.push({k, box: [b.left, b.top, b.right, b.bottom],
              cell: [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)], width: s.line.width});
  });
  return {outlines: out};
}"""


def assert_outlines_in_cells(page, key: str) -> int:
    """Each marked neuron's outline lies inside its own cell (at any zoom); returns how many were checked."""
    found = page.evaluate(OUTLINES_JS, key)
    assert "error" not in found, found
    outlines = found["outlines"]
    assert outlines and not any(o.get("missing") for o in outlines), found
    for o in outlines:
        (left, top, right, bottom), (cl, ct, cr, cb) = o["box"], o["cell"]
        slack = o["width"] / 2 + 0.6  # the stroke straddles the path; sub-pixel rounding
        assert cl - slack <= left and right <= cr + slack and ct - slack <= top and bottom <= cb + slack, (key, o)
        assert right - left > 0.5 * (cr - cl), (key, o)  # and still fills most of it: visible from the back row
    return len(outlines)


def test_every_page_in_a_browser(server, browser):
    """The 20-minute lesson at 1280x720, then every page at 150% zoom: key figures in view, outlines in cells."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 720})
    main = page.locator('[data-testid="stMain"]')
    page.goto(server)

    # Model page (the default): the images in view at once; the trigger enlarged below
    page.get_by_role("heading", name="Where the model looks").wait_for(timeout=90_000)
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert "mnist-badnets" in sidebar.inner_text() and "1. Model" in sidebar.inner_text()  # numbered steps
    sidebar.get_by_text("Attack success").first.wait_for(timeout=30_000)  # its columns may land a moment later
    assert metric_value(page, "Attack success rate") == "100.0%"
    page.wait_for_function("document.querySelectorAll('[data-testid=stMain] .js-plotly-plot').length >= 3")
    assert_in_view(page, chart_box(page, "samples"), "the clean and triggered images")
    no_exceptions(page)
    view_shot(page, "model-1280.png")
    shoot(page, "model.png", height=2200)
    main.get_by_role("link", name=re.compile("Next → 2. Neuron salience")).wait_for(timeout=10_000)

    # Salience: heatmaps at once, ground truth (scatter, ROC) once measured, and the answer in words
    goto_page(page, "Neuron salience", "Which neurons look infected?")
    assert "mnist-badnets" in sidebar.inner_text()  # the sidebar is on every page
    main.get_by_text("finding infected neurons: ROC").wait_for(timeout=300_000)
    legend = main.get_by_text(re.compile(r"benign salience \(AUC [01]\.\d\d\)")).first.text_content()
    auc = re.search(r"AUC ([01]\.\d\d)", legend).group(1)
    verdict = main.get_by_text(re.compile(r"^(Yes|No|Partly): here benign salience ranks infected neurons")).first
    assert f"(AUC {auc})" in verdict.inner_text()  # the sentence and the chart give the same number
    for layer in ("net.conv1", "net.conv2", "net.fc1"):
        assert_outlines_in_cells(page, f"heat-{layer}")
    no_exceptions(page)
    view_shot(page, "salience-1280.png")
    shoot(page, "salience.png", height=3000)

    # Threshold: the slider moves the mask and the preview; slider, preview and curve in view together
    goto_page(page, "Threshold", "Choose the purification threshold")
    before = metric_value(page, "Marked neurons")
    assert before.startswith(marked_by_default())
    thumb = main.locator('[data-testid="stSlider"] input[type="range"]').first  # the thumb's keyboard handle
    thumb.focus()
    for _ in range(round((PurifyConfig().ratio - 0.3) / SLIDER_STEP)):  # from the default share down to 0.3
        page.keyboard.press("ArrowLeft")
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="stMetric"]')]
        .some(m => m.innerText.includes('Marked neurons') && m.innerText.includes('34 of 112'))""",
        timeout=60_000,
    )
    assert float(thumb.input_value()) == pytest.approx(0.3)
    main.locator(keyed("curve")).get_by_text("your choice").first.wait_for(timeout=300_000)
    assert_in_view(page, main.locator('[data-testid="stSlider"]').first.bounding_box(), "the slider")
    assert_in_view(page, main.locator('[data-testid="stMetric"]').first.bounding_box(), "the preview")
    assert_in_view(page, chart_box(page, "curve"), "the pruning curve")
    assert assert_outlines_in_cells(page, "threshold-heat") == 34
    no_exceptions(page)
    view_shot(page, "threshold-1280.png")
    shoot(page, "threshold.png", height=1500)

    # Purify: the threshold survived the page switch; a long baseline run (curves in view while it runs),
    # stopped; then the paper's bs-ar run to the end
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
    page.get_by_role("option", name=re.compile(r"^ft$")).click()
    expect(defense).to_have_value(re.compile(r"^ft$"))
    set_steps(2000)
    click_when_idle(page, main.get_by_role("button", name="Start purification"))
    main.get_by_text(re.compile(r"1\. ft: step \d+ of 2000")).first.wait_for(timeout=60_000)
    page.wait_for_timeout(2500)  # a few curve updates
    assert_in_view(page, chart_box(page, "runs"), "the three live curves")
    view_shot(page, "purify-live-1280.png")
    clicked = time.monotonic()
    main.get_by_role("button", name="Stop").click()
    main.get_by_role("button", name="Start purification").and_(main.locator(":enabled")).wait_for(timeout=30_000)
    assert (
        time.monotonic() - clicked < 20
    )  # stopped, not run out: 2000 steps take over a minute (timing: bench/app_speed.py)
    expect(main.get_by_role("combobox", name="Run")).to_have_value("1. ft (stopped)", timeout=30_000)

    defense.click()
    page.get_by_role("option", name=re.compile(r"^bs-ar · the paper")).click()
    set_steps(60)
    click_when_idle(page, main.get_by_role("button", name="Start purification"))
    main.get_by_text(re.compile(r"2\. bs-ar: step \d+ of 60")).first.wait_for(timeout=60_000)
    expect(main.get_by_role("combobox", name="Run")).to_have_value("2. bs-ar (done)", timeout=120_000)
    main.get_by_role("button", name="Download purified model (.zip)").wait_for(timeout=30_000)
    asr_after = float(metric_value(page, "Attack success rate").rstrip("%"))
    assert asr_after < 90, asr_after
    assert main.get_by_text(re.compile(r"^2\. bs-ar \(benign salience 30% marked, λ .*no distillation\): ")).count()
    main.get_by_role("button", name="Clear runs").click()  # asks first
    main.get_by_text(re.compile("Forget the 2 runs of this model")).wait_for(timeout=10_000)
    main.get_by_role("button", name="Cancel").click()
    expect(main.get_by_role("combobox", name="Run")).to_have_value("2. bs-ar (done)")  # nothing was cleared
    no_exceptions(page)
    shoot(page, "purify.png", height=2400)

    # presenter mode: larger text everywhere
    size = page.evaluate("getComputedStyle(document.documentElement).fontSize")
    sidebar.get_by_text("Presenter mode").click()
    page.wait_for_function(f"getComputedStyle(document.documentElement).fontSize !== '{size}'", timeout=30_000)
    goto_page(page, "Threshold", "Choose the purification threshold")
    main.locator(keyed("curve")).get_by_text("your choice").first.wait_for(timeout=60_000)
    view_shot(page, "presenter-threshold-1280.png")
    page.close()

    # 150% zoom: a 1280x720 screen at 150% is an 853x480 CSS viewport drawn at 1.5 device pixels per pixel
    zoomed = browser.new_context(viewport={"width": 853, "height": 480}, device_scale_factor=1.5)
    page = zoomed.new_page()
    main = page.locator('[data-testid="stMain"]')
    page.goto(server)
    page.get_by_role("heading", name="Where the model looks").wait_for(timeout=90_000)
    page.wait_for_function("document.querySelectorAll('[data-testid=stMain] .js-plotly-plot').length >= 3")
    view_shot(page, "model-150.png")
    main.locator(keyed("trigger")).scroll_into_view_if_needed()
    view_shot(page, "trigger-150.png")
    goto_page(page, "Neuron salience", "Which neurons look infected?")
    main.get_by_text("finding infected neurons: ROC").wait_for(timeout=300_000)
    for layer in ("net.conv1", "net.conv2", "net.fc1"):
        assert_outlines_in_cells(page, f"heat-{layer}")
    main.locator(keyed("heat-net.conv2")).scroll_into_view_if_needed()
    view_shot(page, "salience-150.png")
    goto_page(page, "Threshold", "Choose the purification threshold")
    main.locator(keyed("curve")).get_by_text("your choice").first.wait_for(timeout=60_000)
    chart_box(page, "threshold-heat")  # drawn
    assert assert_outlines_in_cells(page, "threshold-heat") == marked_count()
    view_shot(page, "threshold-150.png")
    main.locator(keyed("threshold-heat")).scroll_into_view_if_needed()
    view_shot(page, "threshold-heat-150.png")
    goto_page(page, "Purify", "Purify the model")
    main.get_by_text("No run yet").wait_for(timeout=30_000)
    no_exceptions(page)
    view_shot(page, "purify-150.png")
    zoomed.close()


def test_fresh_session_starts_on_the_default_model(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server + "/threshold")
    page.get_by_role("heading", name="Choose the purification threshold").wait_for(timeout=60_000)
    assert metric_value(page, "Marked neurons").startswith(marked_by_default())  # the other session's slider is its own
    no_exceptions(page)
    page.close()
