"""The Compare page through AppTest: shipped results at once, a short run of every defense filling the table,
and the cache answering a revisit; the sidebar's report."""

from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest

from defense import compare
from tests.test_app import APP, chart, run_until


def open_app(page: str) -> AppTest:
    """The page in a fresh session; generous timeouts: a loaded 2-core machine runs these slowly."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BNL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def table(at):
    frame = next(d for d in at.main.dataframe if "ASR after" in d.value.columns)
    return frame.value


def test_bundled_model_shows_its_shipped_comparison_at_once(cache):
    at = open_app("compare")
    assert [t.value for t in at.title] == ["Compare every defense"]
    assert any("shipped with this bundled model" in i.value for i in at.main.info)
    rows = table(at)
    names = [e.name for e in compare.registered()]
    paper_shipped = any(d.split(" ")[0] == "bs-ar" for d in rows["defense"])  # the paper's form, if it was shipped
    assert len(rows) >= 9 and rows["defense"].str.contains("★ paper").sum() == int(paper_shipped)
    missing = len(names) - len(rows)  # defenses registered after the results were shipped
    buttons = {b.label for b in at.main.button}
    assert buttons == ({"Re-run all"} if missing == 0 else {"Re-run all", f"Run the {missing} missing"})
    scatter = chart(at, "compare-scatter")
    points = [t for t in scatter["data"] if t.get("mode") in ("markers", "markers+text")]
    assert len(points) == len(rows)  # one point per defense; names written only where they do not collide
    written = {t["name"] for t in points if t["mode"] == "markers+text"}
    assert "nc-ar" in written and ("bs-ar (paper)" in written) == paper_shipped


def test_a_short_run_of_every_defense_fills_the_table_and_is_cached(cache):
    at = open_app("compare")
    at.session_state["compare_steps"] = 3  # few steps: the settings differ from the shipped ones
    at.run()
    assert any("No results yet" in i.value for i in at.main.info)
    at.button(key="w_compare_run").click().run()
    job = at.session_state["compare_job"]
    assert job.active and any(b.label == "Stop" for b in at.main.button)  # overall progress with Stop
    assert at.main.get("progress")
    run_until(at, lambda a: not a.session_state["compare_job"].active, timeout=600, pause=1.0)
    at.run()
    assert job.status == "done", job.error
    rows = table(at)
    names = [e.name for e in compare.registered()]
    assert len(rows) == len(names)
    assert rows["status"].eq("done").all()
    assert rows["clean accuracy after"].between(0, 100).all() and rows["ASR after"].between(0, 100).all()
    curves = chart(at, "compare-curves")
    assert {t["name"] for t in curves["data"] if t.get("name")} == set(names)
    scatter = chart(at, "compare-scatter")
    assert any(t["name"] == "Pareto front" for t in scatter["data"])

    # a revisit in a new session (same settings) is answered from the cache, without running
    again = open_app("compare")
    again.session_state["compare_steps"] = 3
    started = time.monotonic()
    again.run()
    assert time.monotonic() - started < 30
    assert len(table(again)) == len(names) and "compare_job" not in again.session_state
    assert any("earlier comparison" in c.value for c in again.main.caption)


def test_sidebar_prepares_the_report_on_request(cache):
    at = open_app("compare")
    labels = [b.label for b in at.sidebar.button]
    assert "Prepare report" in labels and "Download report (HTML)" not in labels  # nothing is built until asked
    assert not any(d.proto.label == "Download report (HTML)" for d in at.sidebar.get("download_button"))
    at.sidebar.button(key="w_report_prepare").click().run()
    assert not at.exception
    key, html = at.session_state["report_html"]
    assert key[0].startswith("mnist-badnets@")
    html = html.decode()
    assert html.count("Plotly.newPlot") >= 10 and "Every defense, side by side" in html
    (button,) = [d for d in at.sidebar.get("download_button") if d.proto.label == "Download report (HTML)"]
    # bytes, not a callable: a callable's id changes on every rerun, so a click during one got nothing (CI)
    assert not button.proto.HasField("deferred_file_id")
