"""The classroom through AppTest: the pages' sentences follow the measured numbers, the lesson's steps and
Next links, Clear runs asks first, the reset restores every default, presenter mode, 2x PNG downloads."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest
from test_app import APP, chart, run_until

from defense.purify import PurifyConfig
from ui import measures, theme

PAGES = ("model", "salience", "threshold", "purify")


def open_app(page: str | None = None) -> AppTest:
    """The app on ``page``; a roomy timeout: a page's first run computes the model's scores."""
    at = AppTest.from_file(APP, default_timeout=180)
    if page:
        at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def fake_identification(aucs: dict[str, float]):
    """A stand-in for ui.measures.identification that reports the given AUCs (the ROC is the diagonal)."""

    def identification(lab_):
        return {m: {"auc": a, "precision_at_k": 0.5, "fpr": [0.0, 1.0], "tpr": [0.0, 1.0]} for m, a in aucs.items()}

    return identification


def salience_answer(at) -> str:
    return next(i.value for i in at.main.info if i.value.startswith(("Yes", "No", "Partly")))


def test_the_salience_answer_follows_the_measured_aucs(monkeypatch):
    loses = {"benign": 0.44, "magnitude": 0.22, "activation": 0.37, "clp": 0.73}
    monkeypatch.setattr(measures, "identification", fake_identification(loses))
    text_loses = salience_answer(open_app("salience"))
    wins = {"benign": 0.86, "magnitude": 0.22, "activation": 0.37, "clp": 0.73}
    monkeypatch.setattr(measures, "identification", fake_identification(wins))
    text_wins = salience_answer(open_app("salience"))
    assert text_loses != text_wins
    assert text_loses.startswith("No: ") and "worse than chance (AUC 0.44)" in text_loses and "(0.73)" in text_loses
    assert text_wins.startswith("Yes: ") and "very well (AUC 0.86)" in text_wins and "best of the 4" in text_wins


def test_the_salience_answer_on_a_real_model_agrees_with_its_roc():
    at = open_app("salience")
    run_until(at, lambda a: any("roc" in c.proto.id for c in a.get("plotly_chart")), timeout=400)
    roc = chart(at, "roc")
    # every score on the chart (the slow ones too, once the background has measured them), not the chance line
    scored = [t for t in roc["data"] if " (AUC " in t["name"] and not t["name"].startswith("chance")]
    auc = {t["name"].split(" (AUC ")[0]: t["name"].split(" (AUC ")[1].rstrip(")") for t in scored}
    said = salience_answer(at)
    assert f"(AUC {auc['benign salience']})" in said  # the same number as the chart's legend
    best = max(auc, key=lambda k: float(auc[k]))
    if best != "benign salience":
        assert f"{best} does best ({auc[best]})" in said
    assert [m.value for m in at.main.markdown if m.value.startswith(("Yes", "No", "Partly"))] == [said]


def test_the_threshold_sentences_read_the_pruning_curve():
    at = open_app("threshold")
    run_until(at, lambda a: any("curve" in c.proto.id for c in a.get("plotly_chart")), timeout=400)
    spec = chart(at, "curve")
    bs_asr = next(t for t in spec["data"] if t["name"] == "benign salience" and t.get("yaxis") == "y2")
    said = next(m.value for m in at.main.markdown if m.value.startswith("With benign salience"))
    from test_app import values

    xs, ys = values(bs_asr["x"]), values(bs_asr["y"])
    first = next((x for x, y in zip(xs, ys) if y <= 0.2), None)
    if first is None:
        assert "never brings the attack below 20%" in said
    else:
        assert f"({first:.0%} zeroed)" in said or f"zeroing {first:.0%} of the neurons" in said
    assert any(c.value.startswith("Zeroing your choice (40% of the neurons)") for c in at.main.caption)


def test_every_page_is_a_numbered_step_ending_with_what_to_look_at_next():
    for i, page in enumerate(PAGES):
        at = open_app(None if page == "model" else page)
        texts = [m.value for m in at.main.markdown]
        assert any(t.startswith("Next") for t in texts[-3:]), (page, texts[-3:])
        links = at.get("page_link")
        if i < len(PAGES) - 1:  # every step but the last links to the next one
            assert links and f"Next → {i + 2}." in links[-1].proto.label, page


def test_charts_download_as_2x_png_and_text_is_readable():
    at = open_app("threshold")
    for c in at.get("plotly_chart"):
        config = json.loads(c.proto.config)
        assert config["toImageButtonOptions"]["scale"] == 2 and config["toImageButtonOptions"]["filename"]
        spec = json.loads(c.proto.spec)
        assert spec["layout"]["template"]["layout"]["font"]["size"] >= theme.MIN_FONT
        assert all(a["font"]["size"] >= theme.MIN_FONT for a in spec["layout"].get("annotations", []))


def test_clear_runs_asks_first_and_reset_restores_every_default():
    at = open_app("purify")
    at.number_input(key="w_purify_steps").set_value(5).run()
    at.button(key="w_start").click().run()
    run_until(at, lambda a: not a.session_state["runs"][-1].active)
    at.run()
    at.button(key="w_clear").click().run()
    assert len(at.session_state["runs"]) == 1 and "cannot be undone" in at.main.warning[0].value  # asked, not done
    at.button(key="w_clear_no").click().run()
    assert len(at.session_state["runs"]) == 1
    # change settings all over, then reset
    at.switch_page("pages/threshold.py").run()
    at.slider(key="w_threshold_value").set_value(0.3).run()
    at.toggle(key="w_presenter").set_value(True).run()
    assert at.session_state["presenter"]
    at.button(key="w_reset").click().run()
    at.button(key="w_reset_yes").click().run()
    assert not at.exception
    assert at.session_state["runs"] == [] and at.session_state["threshold_value"] == pytest.approx(PurifyConfig().ratio)
    assert at.toggle(key="w_presenter").value is False
    assert at.slider(key="w_threshold_value").value == pytest.approx(PurifyConfig().ratio)


def test_presenter_mode_enlarges_the_charts():
    at = open_app("threshold")
    small = json.loads(next(c for c in at.get("plotly_chart") if "threshold-heat" in c.proto.id).proto.spec)
    at.toggle(key="w_presenter").set_value(True).run()
    big = json.loads(next(c for c in at.get("plotly_chart") if "threshold-heat" in c.proto.id).proto.spec)
    assert big["layout"]["height"] > small["layout"]["height"]
    assert big["layout"]["template"]["layout"]["font"]["size"] > small["layout"]["template"]["layout"]["font"]["size"]
