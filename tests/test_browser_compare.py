"""The Compare page and the report in a real browser (Playwright + Debian's Chromium).

Opens the Compare page (the bundled model's shipped comparison shows at once), prepares the report
from the sidebar, downloads it, and opens the file in a browser context with networking off, where
every figure must render; saves docs/screenshots/compare.png and report.png.
"""

from __future__ import annotations

import re

import pytest

from bench.server import CHROMIUM
from tests.test_browser import SHOTS, no_exceptions, running_app, shoot

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory) as (url, _):
        yield url


def test_compare_page_and_the_report_offline(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    main = page.locator('[data-testid="stMain"]')
    page.goto(server)
    page.get_by_role("heading", name="The backdoored model").wait_for(timeout=240_000)  # a loaded machine is slow
    page.locator('[data-testid="stSidebarNav"]').get_by_text(re.compile(r"^(\d+\. )?Compare$")).click()
    page.get_by_role("heading", name="Compare every defense").wait_for(timeout=180_000)
    main.get_by_text("shipped with this bundled model").wait_for(timeout=120_000)
    main.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30_000)
    page.wait_for_function("document.querySelectorAll('[data-testid=\"stMain\"] .js-plotly-plot').length >= 2")
    no_exceptions(page)
    shoot(page, "compare.png", height=1700)

    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_role("button", name="Prepare report").click()
    download_button = sidebar.get_by_role("button", name="Download report (HTML)")
    download_button.wait_for(timeout=600_000)  # minutes on a loaded 2-core machine
    with page.expect_download(timeout=60_000) as info:
        download_button.click()
    path = tmp_path / "report.html"
    info.value.save_as(path)
    assert info.value.suggested_filename == "mnist-badnets-report.html"
    page.close()
    text = path.read_text()
    figures = text.count('<div class="figure">')
    assert figures >= 10

    context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    fetched = []

    def refuse(route):
        fetched.append(route.request.url)
        route.abort() if not route.request.url.startswith("file:") else route.continue_()

    context.route(re.compile(".*"), refuse)
    report = context.new_page()
    errors = []
    report.on("pageerror", lambda e: errors.append(str(e)))
    report.goto(path.as_uri())
    report.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length === {figures}", timeout=60_000)
    drawn = report.evaluate(
        "[...document.querySelectorAll('.js-plotly-plot')].filter(p => p.querySelector('.main-svg')).length"
    )
    assert drawn == figures
    assert errors == [] and [u for u in fetched if not u.startswith("file:")] == []
    assert report.get_by_text("Every defense, side by side").count() == 1
    SHOTS.mkdir(parents=True, exist_ok=True)
    report.screenshot(path=str(SHOTS / "report.png"))
    context.close()
