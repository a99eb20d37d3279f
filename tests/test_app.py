"""The Streamlit app through streamlit.testing's AppTest: every page, the threshold slider, live purification,
uploads, and the background runner's session handling."""

from __future__ import annotations

import io
import json
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors
from streamlit.testing.v1 import AppTest

from defense.purify import PurifyConfig
from tests.defaults import layer_sizes, marked_by_default, marked_count
from ui import palette

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "app.py")
PAGES = {
    "model": "The backdoored model",
    "salience": "Which neurons look infected?",
    "threshold": "Choose the purification threshold",
    "purify": "Purify the model",
}


def open_app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    if page:
        at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def run_until(at: AppTest, done, timeout: float = 90, pause: float = 0.5) -> AppTest:
    """Rerun (as the page's polling would) until ``done(at)``."""
    deadline = time.monotonic() + timeout
    while not done(at):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(pause)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.main.metric if m.label == label)


def chart(at: AppTest, key: str) -> dict:
    """The plotly figure (as JSON) of the chart with this key."""
    for c in at.get("plotly_chart"):
        if c.proto.id.endswith(key) or key in c.proto.id:
            return json.loads(c.proto.spec)
    raise KeyError(key)


def values(v) -> list:
    """A plotly JSON array: a list, or plotly's typed array {'dtype', 'bdata' (base64)}."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def outlined(spec: dict) -> int:
    """Neurons outlined as marked on a heatmap figure (outlines are shapes in the cells' coordinates)."""
    return sum(1 for s in spec["layout"].get("shapes", []) if s.get("name") == "marked")


# ---------------------------------------------------------------- every page


@pytest.mark.parametrize("page", list(PAGES))
def test_page_renders_on_the_default_model(page):
    at = open_app(None if page == "model" else page)
    assert [t.value for t in at.title] == [PAGES[page]]
    assert len(at.main.markdown[0].value.split(". ")) >= 2  # the page opens with plain sentences
    side = " ".join(m.value for m in at.sidebar.markdown)
    assert "mnist-badnets" in side and "badnets attack" in side  # the current model, on every page
    assert {m.label for m in at.sidebar.metric} == {"Clean accuracy", "Attack success"}
    assert not at.error


def test_model_page_shows_accuracy_asr_samples_and_attribution():
    at = open_app()
    assert metric(at, "Clean accuracy") == "97.9%"
    assert metric(at, "Attack success rate") == "100.0%"
    assert float(metric(at, "Attribution on the trigger").rstrip("%")) > 30  # the model looks at the 3x3 patch
    samples = chart(at, "samples")
    titles = [a["text"] for a in samples["layout"]["annotations"]]
    assert sum(t.endswith("→ 0 ⚠") for t in titles) == 8  # every triggered sample goes to the target
    assert len(chart(at, "attribution")["data"]) == 16


def test_choosing_another_bundled_model_updates_every_page():
    at = open_app()
    at.selectbox(key="w_model").set_value("mnist-blend").run()
    assert "mnist-blend" in " ".join(m.value for m in at.sidebar.markdown)
    assert "Blend" in " ".join(m.value for m in at.main.markdown)
    at.switch_page("pages/threshold.py").run()
    assert "mnist-blend" in " ".join(m.value for m in at.sidebar.markdown)
    assert not at.exception


def test_salience_page_heatmaps_ground_truth_roc_and_csv():
    at = open_app("salience")
    heat = [c for c in at.get("plotly_chart") if "heat-" in c.proto.id]
    assert len(heat) == 3  # conv1, conv2, fc1
    spec = json.loads(heat[0].proto.spec)
    maps = [t for t in spec["data"] if t["type"] == "heatmap"]
    assert (
        len(maps) == 2
        and "benign salience" in maps[0]["hovertemplate"]
        and "weight magnitude" in maps[0]["hovertemplate"]
    )
    assert outlined(spec) == 2 * round(PurifyConfig().ratio * layer_sizes()[0])  # conv1's default share, both maps
    at.radio(key="w_salience_scale").set_value("raw").run()
    assert not at.exception
    run_until(at, lambda a: any("roc" in c.proto.id for c in a.get("plotly_chart")), timeout=120)
    roc = chart(at, "roc")
    assert [t["name"].split(" (AUC")[0] for t in roc["data"][:4]] == [
        "benign salience",
        "weight magnitude",
        "mean activation",
        "channel Lipschitz (CLP)",
    ]
    scatter = chart(at, "scatter")
    assert {t["name"] for t in scatter["data"]} == {"infected", "clean"}
    csv = at.get("download_button")[0]
    assert csv.proto.label == "Download all scores (CSV)"
    # the stability view, measured in the background after the truths
    run_until(at, lambda a: any("three different clean subsets" in c.value for c in a.caption), timeout=120)
    from defense import data as data_io
    from defense import stability
    from defense.bundle import load_bundle

    model = load_bundle(REPO / "assets" / "models" / "mnist-badnets").model
    hard = stability.hardest_images_report(model, data_io.load_dataset("mnist5k", seed=0).clean)
    assert any(f"carry {hard['share']:.0%} of it" in m.value for m in at.markdown)  # measured, not a fixed claim

    # the second ground truth (TAC) and its agreement with ablation: the page's figures are the library's
    def tac_caption(a):
        return next((c.value for c in a.caption if "Trigger-activated change (TAC)" in c.value), None)

    run_until(at, lambda a: tac_caption(a) is not None, timeout=120)
    from defense import ablation, bundle, data, metrics, truth
    from defense.neurons import neuron_map

    b = bundle.load_bundle(REPO / "assets" / "models" / "mnist-badnets")
    test = data.load_dataset("mnist5k", seed=0).test
    layers = neuron_map(b.model)
    gt = ablation.ground_truth(b.model, layers, test, metrics.triggered_set(test, b.trigger, b.target))
    agree = truth.agreement(gt, truth.tac_truth(b.model, layers, test, b.trigger, b.target))
    assert f"at AUC {agree['tac_auc_vs_ablation']:.2f}" in tac_caption(at)
    assert f"{agree['top_k_overlap']:.0%} of them are also TAC-infected" in tac_caption(at)
    table = next(d.value for d in at.dataframe if "AUC vs TAC" in d.value.columns)
    assert set(table["score"]) >= {"benign salience", "channel Lipschitz (CLP)"}


def test_salience_page_shows_the_reversed_trigger_once_the_background_has_measured_it():
    # a clean subset no other test opens: finished jobs are shared by every session of the process, and the
    # reversal on subset 0 may have been measured already for another test's session
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["clean_seed"] = 2
    at.switch_page("pages/salience.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Being measured in the background" in c.value for c in at.caption)  # said while it runs
    from defense.registry import SCORES

    slow = [s.label for s in SCORES if s.cost == "slow"]
    said_pending = set()

    def answer_agrees_with_roc(a: AppTest) -> bool:
        # while slow scores land one by one, the answer in words counts the ones the ROC does not show yet
        if not any("roc" in c.proto.id for c in a.get("plotly_chart")):
            return False
        missing = [n for n in slow if not any(t["name"].startswith(n) for t in chart(a, "roc")["data"])]
        answer = next(m.value for m in a.markdown if m.value.startswith(("Yes", "No", "Partly")))
        if missing:
            said_pending.add(len(missing))
            assert f"while {len(missing)} slower score" in answer, (missing, answer)
        else:
            assert "still being measured" not in answer, answer
        return not missing

    run_until(at, answer_agrees_with_roc, timeout=600, pause=2)
    assert said_pending  # the page was seen with slow scores still to come
    verdict = next(m.value for m in at.markdown if m.value.startswith("Suspected target"))
    assert "**label 0**" in verdict and "declares the same label" in verdict  # mnist-badnets' target is 0
    bars = chart(at, "reversed-sizes")["data"][0]
    assert len(bars["x"]) == 10 and bars["marker"]["color"][0] == palette.INFECTED
    assert min(bars["y"]) == bars["y"][0]  # the target's reversed trigger is the smallest
    roc = [t["name"] for t in chart(at, "roc")["data"]]
    assert any(n.startswith("reversed-trigger ablation") for n in roc)  # and the score joins the ROC


# ---------------------------------------------------------------- threshold


def test_slider_changes_the_mask_and_the_preview():
    at = open_app("threshold")
    assert metric(at, "Marked neurons") == marked_by_default()
    before = (metric(at, "Clean accuracy if zeroed"), metric(at, "Attack success if zeroed"))
    assert outlined(chart(at, "threshold-heat")) == marked_count()
    at.slider(key="w_threshold_value").set_value(0.3).run()  # its speed is measured by bench/app_speed.py
    assert metric(at, "Marked neurons") == "34 of 112"
    assert outlined(chart(at, "threshold-heat")) == 34
    assert (metric(at, "Clean accuracy if zeroed"), metric(at, "Attack success if zeroed")) != before
    at.radio(key="w_threshold_scope").set_value("global").run()
    assert metric(at, "Marked neurons") == "34 of 112"
    at.radio(key="w_threshold_mode").set_value("value").run()  # a cut on the normalized score instead
    assert not at.exception and metric(at, "Marked neurons") != "34 of 112"
    at.slider(key="w_threshold_value").set_value(0.0).run()
    assert metric(at, "Marked neurons") == "3 of 112"  # the most suspect neuron of each layer


def test_threshold_survives_page_switches_and_reaches_purification():
    at = open_app("threshold")
    at.slider(key="w_threshold_value").set_value(0.3).run()
    at.switch_page("pages/purify.py").run()
    # the first defense may mark with a slow score: the page says so and polls until it is measured
    run_until(at, lambda a: any("34 of 112 neurons" in c.value for c in a.main.caption), timeout=300)
    at.switch_page("pages/threshold.py").run()
    assert at.slider(key="w_threshold_value").value == pytest.approx(0.3)


def test_a_score_cut_is_used_only_by_a_defense_that_marks_by_the_same_score():
    """0.35 of benign salience's normalized range means nothing on another score's: nc-ar, which marks by its
    reversed trigger, keeps its own share; bs-ar, which marks by benign salience, takes the cut."""
    at = open_app("threshold")
    at.radio(key="w_threshold_mode").set_value("value").run()
    at.slider(key="w_threshold_value").set_value(0.35).run()
    cut = metric(at, "Marked neurons")
    at.switch_page("pages/purify.py").run()
    at.selectbox(key="w_purify_defense").set_value("nc-ar").run()
    measured = "of 112 neurons (the 10% most suspect in each layer), its own share"
    run_until(at, lambda a: any(measured in c.value for c in a.main.caption), timeout=300)
    note = next(c.value for c in at.main.caption if measured in c.value)
    assert "the score cut set on Threshold is on benign salience's scale" in note
    at.selectbox(key="w_purify_defense").set_value("bs-ar").run()
    note = next(c.value for c in at.main.caption if "Marked by benign salience" in c.value)
    assert f"{cut} neurons (normalized importance ≤ 0.35), as set on Threshold" in note


def test_pruning_curve_marks_the_current_choice():
    at = open_app("threshold")
    run_until(at, lambda a: any("curve" in c.proto.id for c in a.get("plotly_chart")), timeout=180)
    spec = chart(at, "curve")
    from defense.registry import SCORES

    # one curve per score registered for the curve (benign salience, magnitude, activation, BS+magnitude, ...)
    assert {t["name"] for t in spec["data"]} == {s.label for s in SCORES if s.curve}
    assert {"benign salience", "weight magnitude", "mean activation"} <= {t["name"] for t in spec["data"]}
    assert [s["x0"] for s in spec["layout"]["shapes"]] == [PurifyConfig().ratio] * 2


def test_a_newly_registered_score_appears_in_the_threshold_page_with_no_app_edit():
    from defense.neurons import NeuronScores
    from defense.registry import SCORES, Score

    def by_index(model, clean, layers):  # a toy: each neuron scored by its index, so the lowest are suspect
        return NeuronScores("toy", {n: torch.arange(nl.size, dtype=torch.float) for n, nl in layers.items()})

    SCORES.names()  # the built-in scores load first
    SCORES.register(
        Score(
            name="toy",
            label="toy score",
            explanation="The neuron's index in its layer: a test's toy.",
            low_is_suspect=True,
            compute=by_index,
            needs=frozenset(),
        )
    )
    try:
        at = open_app("threshold")
        box = at.selectbox(key="w_threshold_metric")
        assert box.options[:3] == ["benign salience", "weight magnitude", "mean activation"]
        assert box.options[-1] == "toy score"  # after every score registered before it
        box.set_value("toy").run()
        assert not at.exception
        assert "a test's toy" in at.selectbox(key="w_threshold_metric").help  # the help text is the registry's
        assert metric(at, "Marked neurons") == marked_by_default()  # the default share of each layer, as for any score
        assert any("Colour: toy score" in c.value for c in at.main.caption)
    finally:
        SCORES.unregister("toy")


# ---------------------------------------------------------------- purification


def runs(at: AppTest) -> list:
    return at.session_state["runs"]


def test_short_purification_completes_and_lowers_the_asr():
    at = open_app("purify")
    at.number_input(key="w_purify_steps").set_value(40).run()
    at.button(key="w_start").click().run()
    assert runs(at) and runs(at)[-1].active
    run_until(at, lambda a: not runs(a)[-1].active)
    run = runs(at)[-1]
    assert run.status == "done", run.error
    at.run()
    assert float(metric(at, "Attack success rate").rstrip("%")) < 60
    assert [r["step"] for r in run.evaluations()] == [0, 10, 20, 30, 40]  # eval every 10 steps for the live curves
    spec = chart(at, "runs")
    (name,) = {t["name"] for t in spec["data"]}
    # the recommended defense's own share, in the label
    assert name.startswith("1. nc-ar · ") and "10% marked, λ 0.03, lr 0.02, 40 steps" in name
    assert name.endswith(", distillation")
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download purified model (.zip)", "Download report (JSON)"]
    check_downloads(run)

    # run again with a baseline: the curves overlay
    at.selectbox(key="w_purify_defense").set_value("ft").run()
    at.number_input(key="w_purify_steps").set_value(10).run()
    at.button(key="w_start").click().run()
    run_until(at, lambda a: not runs(a)[-1].active)
    at.run()
    names = {t["name"] for t in chart(at, "runs")["data"]}
    assert {n.split(" · ")[0] for n in names} == {"1. nc-ar", "2. ft"}
    assert "2. ft · lr 0.02, 10 steps, no distillation" in names  # run labels carry their settings


def test_a_defense_marking_with_a_slow_score_starts_before_the_score_is_measured():
    at = open_app("purify")
    at.selectbox(key="w_purify_defense").set_value("nc-ar").run()
    # the page goes on while the score is measured (a fresh job board per test: seconds to go), and says so
    waiting = next(c.value for c in at.caption if c.value.startswith("**nc-ar**"))
    assert "being measured in the background" in waiting and "A run started now waits for it" in waiting
    assert any(link.proto.label.startswith("Next") for link in at.get("page_link"))
    at.number_input(key="w_purify_steps").set_value(5).run()
    at.button(key="w_start").click().run()  # the inversion score is not measured yet: the run waits for it
    run_until(at, lambda a: not runs(a)[-1].active, timeout=300, pause=2)
    run = runs(at)[-1]
    assert run.status == "done", run.error
    assert run.run.config.metric == "inversion" and run.run.config.ratio == 0.1 and run.run.config.reversed_share == 0.4
    assert run.run.reversed_trigger.target == 0  # mnist-badnets' target, found from clean images
    assert "10% marked" in run.settings  # the label says the share it ran with, not the Threshold page's 40%

    def note(a):
        return next((c.value for c in a.caption if c.value.startswith("**nc-ar**")), None)

    run_until(at, lambda a: note(a) is not None, timeout=300, pause=2)  # once the page has the score too
    marked = sum(round(0.1 * n) for n in layer_sizes())
    assert f"{marked} of 112 neurons (the 10% most suspect in each layer), its own share while" in note(at)


def test_the_purify_note_says_when_a_defense_brings_its_own_penalty():
    from defense.baselines import settings_for
    from defense.purify import PurifyConfig

    at = open_app("purify")
    own = settings_for("bs-ar-kd", PurifyConfig())

    def note(a, name):
        return next(c.value for c in a.caption if c.value.startswith(f"**{name}**"))

    at.selectbox(key="w_purify_defense").set_value("bs-ar-kd").run()
    assert (
        f"Its own penalty: λ {own.lam:g}, AR's knee at {own.knee_scale:g}× each tensor's RMS, while Penalty λ is left"
        in note(at, "bs-ar-kd")
    )
    at.selectbox(key="w_purify_defense").set_value("bs-ar").run()  # the paper's form keeps the page's λ
    assert "Its own penalty" not in note(at, "bs-ar")
    at.selectbox(key="w_purify_defense").set_value("bs-l1").run()
    at.number_input(key="w_purify_lam").set_value(0.05).run()  # a λ the user typed wins over the defense's own
    assert "Its own penalty" not in note(at, "bs-l1")


def check_downloads(run) -> None:
    """The JSON report and the purified bundle say and hold what the page shows."""
    from defense import data, metrics
    from defense.bundle import load_bundle
    from ui.lab import bundled
    from ui.runs import report_json

    key, bundle = bundled("mnist-badnets")
    lab = type("LabStub", (), {"name": bundle.name, "bundle": bundle})()
    report = json.loads(report_json(run.report(lab)))
    assert report["after"]["asr"] < report["before"]["asr"] and report["steps"] == run.step
    assert len(report["history"]) == run.step + 1 and report["config"]["steps"] == run.steps
    path = Path(tempfile.mkdtemp()) / "p.zip"
    path.write_bytes(run.bundle_zip(lab))
    purified = load_bundle(path)
    test = data.load_dataset("mnist5k").test
    after = metrics.evaluate(purified.model, test, purified.trigger, purified.target)
    assert after["asr"] == pytest.approx(report["after"]["asr"], abs=1e-6)
    assert purified.meta["purified_from"] == "mnist-badnets"


def test_stop_ends_a_run_at_once_and_keeps_its_curves():
    at = open_app("purify")
    at.number_input(key="w_purify_steps").set_value(3000).run()
    at.button(key="w_start").click().run()
    run_until(at, lambda a: runs(a)[-1].step >= 5)
    run = runs(at)[-1]
    stop = next(b for b in at.button if b.key and b.key.startswith("w_stop"))
    stop.click()
    at.run()
    run.thread.join(timeout=60)  # no time limit here (shared machine): the browser bench measures how fast
    assert not run.thread.is_alive()
    assert run.status == "stopped" and 5 <= run.step < 3000
    at.run()
    assert chart(at, "runs")["data"]  # the curves stay


def test_the_shared_cached_model_is_never_modified():
    from ui.lab import bundled, model_key

    at = open_app("purify")
    key, bundle = bundled("mnist-badnets")
    at.number_input(key="w_purify_steps").set_value(10).run()
    at.button(key="w_start").click().run()
    run_until(at, lambda a: not runs(a)[-1].active)
    assert model_key(bundle) == key
    assert not bundle.model._forward_hooks and all(not m._forward_hooks for m in bundle.model.modules())


def test_two_sessions_purify_independently():
    a, b = open_app("purify"), open_app("purify")
    a.number_input(key="w_purify_steps").set_value(20).run()
    b.number_input(key="w_purify_steps").set_value(30).run()
    a.button(key="w_start").click().run()
    b.button(key="w_start").click().run()

    def both_done(_) -> bool:  # both tabs keep polling, as open tabs do (a tab not seen for 10 s is let go)
        b.run()
        return not runs(a)[-1].active and not runs(b)[-1].active

    run_until(a, both_done)
    ra, rb = runs(a)[-1], runs(b)[-1]
    assert len(runs(a)) == len(runs(b)) == 1 and ra is not rb
    assert (ra.status, ra.step, rb.status, rb.step) == ("done", 20, "done", 30)
    assert ra.run.model is not rb.run.model


# ---------------------------------------------------------------- uploads


def bundle_zip(name: str = "mnist-blend") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in (REPO / "assets" / "models" / name).iterdir():
            z.write(f, f"{name}/{f.name}")
    return buf.getvalue()


def test_upload_a_bundle_zip():
    at = open_app()
    at.file_uploader(key="w_upload").upload("my-model.zip", bundle_zip(), "application/zip").run()
    at.button(key="w_upload_go").click().run()
    assert not at.exception and not at.error
    assert at.session_state["model"].startswith("upload:")
    assert "mnist-blend (uploaded)" in at.selectbox(key="w_model").options
    assert "Blend" in " ".join(m.value for m in at.main.markdown)


def test_upload_a_bare_state_dict_with_an_architecture():
    from defense.bundle import load_bundle

    state = load_bundle(REPO / "assets" / "models" / "mnist-badnets").model.state_dict()
    at = open_app()
    at.file_uploader(key="w_upload").upload("weights.safetensors", save_safetensors(state)).run()
    assert at.selectbox(key="w_upload_arch").value == "small_cnn"
    at.selectbox(key="w_upload_like").set_value("mnist-badnets").run()
    at.button(key="w_upload_go").click().run()
    assert not at.exception and not at.error
    assert metric(at, "Attack success rate") == "100.0%"
    assert "weights" in " ".join(m.value for m in at.sidebar.markdown)


@pytest.mark.parametrize(
    "name, payload, message",
    [
        ("broken.zip", b"not a zip at all", "cannot be used"),
        ("weights.safetensors", b"\x00" * 64, "not a valid safetensors file"),
        ("weights.pt", b"garbage", "refused"),
        ("other.safetensors", save_safetensors({"w": torch.zeros(3)}), "do not fit the architecture"),
    ],
)
def test_bad_uploads_say_what_is_wrong(name, payload, message):
    at = open_app()
    at.file_uploader(key="w_upload").upload(name, payload).run()
    at.button(key="w_upload_go").click().run()
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value, [e.value for e in at.error]
    assert at.session_state["model"] == "mnist-badnets"  # the current model is kept


def test_read_upload_rebuilds_a_standard_trigger():
    from defense.bundle import load_bundle
    from ui.upload import read_upload

    state = load_bundle(REPO / "assets" / "models" / "mnist-badnets").model.state_dict()
    key, b = read_upload("w.safetensors", save_safetensors(state), "small_cnn", "mnist-blend", ("badnets", 0))
    assert b.trigger.kind == "badnets" and b.target.label == 0 and key.startswith("upload:")


# ---------------------------------------------------------------- the runner without a page


def test_runner_stops_when_its_session_is_no_longer_seen(monkeypatch):
    from defense import data, metrics
    from defense.bundle import load_bundle
    from defense.purify import Purification
    from ui import runs as ui_runs

    monkeypatch.setattr(ui_runs, "ABSENT_S", 0.3)
    b = load_bundle(REPO / "assets" / "models" / "mnist-badnets")
    splits = data.load_dataset("mnist5k")
    small = splits.test.subset(torch.arange(100))
    trig = metrics.triggered_set(small, b.trigger, b.target)
    runner = ui_runs.Runner(
        "t",
        "bs-ar",
        "k",
        100_000,
        lambda: Purification(b.model, splits.clean, small, trig, PurifyConfig(steps=100_000, eval_every=50)),
    ).start()
    runner.thread.join(timeout=30)
    assert runner.status == "abandoned" and runner.step < 100_000


def test_a_run_waiting_for_its_score_stops_at_once_and_takes_a_failed_job_as_missing():
    import threading
    from concurrent.futures import Future

    from defense.neurons import NeuronScores
    from ui.runs import Runner, wait_for_score

    runner = Runner("1. nc-ar", "nc-ar", "key", 5, build=lambda: None)
    pending: Future = Future()
    threading.Timer(0.3, runner.stop).start()
    assert wait_for_score(pending, runner) is None and not pending.done()  # Stop ends the wait, job or not

    runner = Runner("2. nc-ar", "nc-ar", "key", 5, build=lambda: None)
    failed: Future = Future()
    failed.set_exception(RuntimeError("cancelled"))
    assert wait_for_score(failed, runner) is None  # the run measures the score itself
    done: Future = Future()
    scores = NeuronScores("inversion", {})
    threading.Timer(0.3, done.set_result, args=(scores,)).start()
    assert wait_for_score(done, runner) is scores


def test_the_recommended_defenses_slow_score_is_queued_first(monkeypatch):
    """The Purify page's first choice marks with a slow score (nc-ar: the reversal): of the slow scores a page
    queues in the background when a model opens, it goes first, so a first purification waits least."""
    from concurrent.futures import Future
    from types import SimpleNamespace

    import ui.lab as lab_module
    from defense.baselines import recommended
    from defense.registry import SCORES

    queued: list[str] = []
    pending: Future = Future()
    monkeypatch.setattr(lab_module, "_scores", lambda *args: {})
    stub = SimpleNamespace(
        key="k",
        fraction=0.05,
        seed=0,
        bundle=SimpleNamespace(model=None),
        splits=SimpleNamespace(clean=None),
        slow_score=lambda name: queued.append(name) or pending,
    )
    stub.slow_jobs = lambda: lab_module.Lab.slow_jobs(stub)  # what the Salience page also asks for
    lab_module.Lab.scores(stub)
    slow = {s.name for s in SCORES if s.cost == "slow"}
    assert queued[0] == recommended().marking[0] and set(queued) == slow and len(queued) == len(slow)
