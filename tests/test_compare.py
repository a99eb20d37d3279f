"""Every defense on one model (defense/compare.py), its results cache, the shipped results, and the CLI's
``compare`` and ``report`` commands (the report opens offline: checked for external references here, and
rendered in Chromium in test_browser_compare.py)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import pytest
import torch

from defense import bundle as bundle_io
from defense import compare, result_store
from defense.paths import MODELS_DIR, benchmark_models
from tests.conftest import assert_clean_error, run_cli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BNL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def badnets():
    b = bundle_io.load_bundle(MODELS_DIR / "mnist-badnets")
    return b, compare.subsets_for(b, [0], 0.05)


def entries(*names):
    return [e for e in compare.registered() if e.name in names]


def short(steps=3):
    return replace(compare.base_settings(), steps=steps, eval_every=min(10, steps))


def test_every_registered_defense_is_compared_and_bs_ar_is_the_papers():
    from defense.registry import DEFENSES

    names = [e.name for e in compare.registered()]
    assert names == DEFENSES.names()
    assert [e.name for e in compare.registered() if e.paper] == ["bs-ar"]


def test_runs_record_accuracy_asr_loss_steps_and_curve(badnets, cache):
    b, subs = badnets
    c = compare.Comparison(b.model, subs, entries("ft", "clp"), short(3))
    events = list(c)
    assert [e["event"] for e in events if e["event"] != "step"] == ["start", "end", "start", "end"]
    assert c.progress() == 1.0 and c.finished
    ft, clp = c.results[(0, "ft")], c.results[(0, "clp")]
    assert ft["status"] == clp["status"] == "done"
    assert ft["steps"] == 3 and clp["steps"] == 0
    assert ft["before"]["asr"] == pytest.approx(b.meta["asr"], abs=0.01)  # the bundled model, measured again
    assert ft["acc_lost"] == pytest.approx(ft["before"]["clean_acc"] - ft["after"]["clean_acc"])
    assert [h["step"] for h in ft["history"]] == [0, 3]
    assert ft["config"]["steps"] == 3 and ft["config"]["reg"] == "none"  # as the defense ran it
    assert clp["after"]["asr"] < clp["before"]["asr"]  # CLP prunes something on this model
    assert torch.equal(
        next(b.model.parameters()), next(bundle_io.load_bundle(MODELS_DIR / "mnist-badnets").model.parameters())
    )
    json.dumps(c.results[(0, "ft")], allow_nan=False)  # plain JSON


def test_stop_ends_the_current_run_and_skips_the_rest(badnets):
    b, subs = badnets
    c = compare.Comparison(b.model, subs, entries("ft", "ft-kd"), short(200))
    for event in c:
        if event["event"] == "step" and event["step"] >= 2:
            c.stop()
    assert c.status == {(0, "ft"): "stopped", (0, "ft-kd"): "not run"}
    assert c.results[(0, "ft")]["steps"] <= 3 and c.results[(0, "ft")]["after"] is not None
    assert c.finished_runs(0) == {}  # a stopped run is not worth caching


def test_a_failing_defense_does_not_end_the_comparison(badnets):
    b, subs = badnets

    def broken(*_args):
        raise RuntimeError("no such layer")

    toy = compare.Entry("broken", "a defense that fails", broken)
    c = compare.Comparison(b.model, subs, [toy, *entries("clp")], short(2))
    c.run()
    assert c.status == {(0, "broken"): "error", (0, "clp"): "done"}
    assert "no such layer" in c.results[(0, "broken")]["error"]
    board = compare.leaderboard(c.results, c.defenses)
    assert board.defense.tolist() == ["clp"]  # a run without numbers has no row


def test_results_are_cached_per_model_subset_and_settings(badnets, cache):
    b, subs = badnets
    c = compare.Comparison(b.model, subs, entries("clp"), short(2))
    c.run()
    compare.save_results(b, c)
    known, source = compare.known_results(b, subs, short(2))
    assert source == "cache" and known[(0, "clp")]["after"] == c.results[(0, "clp")]["after"]
    again = compare.Comparison(b.model, subs, entries("clp"), short(2), known)
    assert again.todo == [] and again.status[(0, "clp")] == "cache" and list(again) == []
    assert compare.known_results(b, subs, short(4))[0] == {}  # other settings
    other = compare.subsets_for(b, [1], 0.05)
    assert compare.known_results(b, other, short(2))[0] == {}  # another clean subset
    changed = bundle_io.load_bundle(MODELS_DIR / "mnist-badnets")
    with torch.no_grad():
        next(changed.model.parameters())[0] += 1e-3
    assert result_store.fingerprint(changed) != result_store.fingerprint(b)
    assert compare.known_results(changed, subs, short(2))[0] == {}  # other weights
    result_store.cache_path(result_store.fingerprint(b)).write_text("{not json")
    assert compare.known_results(b, subs, short(2))[0] == {}  # a damaged cache is a miss, not an error


def test_a_saved_run_made_before_its_defense_changed_its_own_defaults_is_run_again(badnets, cache, monkeypatch):
    from defense.registry import DEFENSES

    b, subs = badnets
    c = compare.Comparison(b.model, subs, entries("clp"), short(2))
    c.run()
    compare.save_results(b, c)
    assert (0, "clp") in compare.known_results(b, subs, short(2))[0]
    # the defense now brings a warm-up of its own: the saved run (made without one) no longer answers for it
    monkeypatch.setitem(DEFENSES._items, "clp", replace(DEFENSES["clp"], defaults={"warmup": 0.1}))
    assert compare.known_results(b, subs, short(2))[0] == {}
    # a run saved under the new default answers for it
    assert compare.runs_as_now("clp", {"config": {"warmup": 0.1}}, short(2))
    assert not compare.runs_as_now("clp", {"config": {"warmup": 0.0}}, short(2))
    assert compare.runs_as_now("clp", {"config": None}, short(2))  # nothing recorded: nothing to contradict


def test_leaderboard_means_spreads_and_pareto_front():
    def run(name, seed, acc, asr, lost, goal):
        return {
            "defense": name, "seed": seed, "status": "done", "after": {"clean_acc": acc, "asr": asr},
            "acc_lost": lost, "steps_to_goal": goal, "seconds": 1.0,
        }  # fmt: skip

    results = {
        (0, "a"): run("a", 0, 0.95, 0.02, 0.02, 30),
        (1, "a"): run("a", 1, 0.93, 0.04, 0.04, None),
        (0, "b"): run("b", 0, 0.97, 0.50, 0.00, None),
        (0, "c"): run("c", 0, 0.90, 0.60, 0.07, None),
    }
    defenses = [compare.Entry(n, n, None, paper=n == "a") for n in "abc"]
    board = compare.leaderboard(results, defenses).set_index("defense")
    assert board.loc["a", "asr"] == pytest.approx(0.03) and board.loc["a", "asr_spread"] == pytest.approx(0.01)
    assert board.loc["a", "steps_to_goal"] == 30 and board.loc["a", "reached"] == 1 and board.loc["a", "seeds"] == 2
    assert math.isnan(board.loc["b", "steps_to_goal"])
    assert board.pareto.to_dict() == {"a": True, "b": True, "c": False}  # c is beaten by a on both
    assert compare.pareto([0.1, 0.1], [0.2, 0.2]) == [True, True]  # equal points do not beat each other


def test_steps_to_goal_counts_a_broken_model_as_no_success():
    """Early in fine-tuning a model can sit at 10% accuracy with ASR 0%: the Compare page's steps wait for the
    accuracy too (within ACC_SLACK of the start), and a saved run is judged again from its curve."""
    curve = [
        {"step": 0, "clean_acc": 0.99, "asr": 1.0},
        {"step": 10, "clean_acc": 0.10, "asr": 0.0},  # broken, not purified
        {"step": 20, "clean_acc": 0.95, "asr": 0.30},  # back, and so is the backdoor
        {"step": 30, "clean_acc": 0.96, "asr": 0.02},  # purified
    ]
    assert compare.steps_to_goal(curve) == 10  # ASR alone (the benchmark's column)
    assert compare.steps_to_goal(curve, acc_slack=compare.ACC_SLACK) == 30
    assert math.isnan(compare.steps_to_goal(curve[:3], acc_slack=compare.ACC_SLACK))
    saved = {  # saved with the old count (10): the leaderboard reads the curve
        "defense": "a", "seed": 0, "status": "shipped", "after": {"clean_acc": 0.96, "asr": 0.02},
        "acc_lost": 0.03, "steps_to_goal": 10, "seconds": 1.0, "history": curve,
    }  # fmt: skip
    board = compare.leaderboard({(0, "a"): saved}, [compare.Entry("a", "a", None)])
    assert board.loc[0, "steps_to_goal"] == 30


def test_scatter_writes_names_only_where_they_do_not_collide_and_always_the_papers_and_the_recommended():
    from ui.compare_charts import LABEL_HEIGHT, LABEL_WIDTH, labelled, tradeoff_figure

    points = {  # defense: (accuracy lost, ASR); eight crowd the origin as on the bundled models
        **{f"near{i}": (0.005 + 0.001 * i, 0.003 + 0.001 * i) for i in range(8)},
        "rec": (0.006, 0.004),
        "paper": (0.026, 0.06),
        "far": (0.014, 1.0),
    }
    results = {
        (0, n): {"defense": n, "seed": 0, "status": "done", "after": {"clean_acc": 0.97 - lost, "asr": asr},
                 "acc_lost": lost, "steps_to_goal": None, "seconds": 1.0}
        for n, (lost, asr) in points.items()
    }  # fmt: skip
    defenses = [compare.Entry(n, n, None, paper=n == "paper", recommended=n == "rec") for n in points]
    board = compare.leaderboard(results, defenses)
    named = labelled(board)
    assert {"paper", "rec", "far"} <= set(named)
    assert sum(n.startswith("near") for n in named) < 8  # the crowd is not all written out
    span_x, span_y = board.acc_lost.max(), board.asr.max()
    spots = {n: (points[n][0] / span_x, points[n][1] / span_y) for n in named}
    for a in named:
        for b in named:
            if a < b:
                dx, dy = abs(spots[a][0] - spots[b][0]), abs(spots[a][1] - spots[b][1])
                assert dx >= LABEL_WIDTH or dy >= LABEL_HEIGHT, (a, b)
    fig = tradeoff_figure(board)
    written = {t.name.removesuffix(" (paper)") for t in fig.data if t.text is not None}
    assert written == set(named)
    assert {t.name.removesuffix(" (paper)") for t in fig.data} >= set(points)  # every point is in the legend
    assert fig.layout.yaxis.range[1] > 1.0  # room above the highest point for its name


@pytest.mark.parametrize("name", [*benchmark_models(), "mnist-preact-badnets"])
def test_bundled_models_ship_results_for_the_current_model_and_settings(name):
    """The shipped results must answer the Compare page's first visit; if this fails, rebuild them with
    ``python -m defense compare --bundle assets/models/NAME --out assets/results/NAME.json``.

    Every bundled model, the PreAct-ResNet-18 included, ships every registered defense."""
    data = result_store.read(result_store.shipped_path(name))
    assert data is not None, f"no shipped results for {name}"
    b = bundle_io.load_bundle(MODELS_DIR / name)
    assert data["fingerprint"] == result_store.fingerprint(b)
    key = result_store.subset_key(0.05, 0, compare.base_settings().to_dict())
    runs = data["subsets"][key]["runs"]
    assert set(runs) == {e.name for e in compare.registered()}
    for n, r in runs.items():
        assert r["status"] == "done" and len(r["history"]) >= 2 and r["config"]["seed"] == 0
        assert compare.runs_as_now(n, r, compare.base_settings()), f"{n} was run with defaults it no longer has"


# ---------------------------------------------------------------- CLI


def test_cli_compare_and_report_bad_input_is_one_error_line(cli, badnets_copy, tmp_path):
    code, _, err = cli("compare", "--bundle", badnets_copy, "--defenses", "nope")
    assert "unknown defense" in assert_clean_error(code, err)
    code, _, err = cli("report", "--bundle", tmp_path / "absent", "--out", tmp_path / "x.html")
    assert_clean_error(code, err)
    code, _, err = cli("report", "--bundle", badnets_copy, "--steps", "0", "--out", tmp_path / "x.html")
    assert "positive integer" in assert_clean_error(code, err)


def test_cli_report_is_one_offline_html_file(badnets_copy, tmp_path, cache):
    out = tmp_path / "report.html"
    proc = run_cli(
        "report", "--bundle", badnets_copy, "--steps", "2", "--defenses", "ft", "clp", "--out", out, timeout=400
    )
    assert proc.returncode == 0, proc.stderr
    assert "compare" in proc.stderr and "report" in proc.stderr  # the progress bars
    assert json.loads(proc.stdout)["out"] == str(out)
    text = out.read_text()
    assert text.count("Plotly.newPlot") == text.count('<div class="figure">') >= 10
    assert len(re.findall(r"<script\b", text)) == text.count("Plotly.newPlot") + 1  # plotly.js inlined once
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", text)  # nothing fetched
    assert "@import" not in text and "url(http" not in text
    for section in ("The model and its attack", "Which neurons look infected", "ROC", "The chosen threshold",
                    "Every purification run", "side by side", "Settings and versions"):  # fmt: skip
        assert section in text
    assert f"<th>package torch</th><td>{torch.__version__}</td>" in text  # versions
    assert "ft" in text and "clp" in text and "--steps 2" in text


def test_the_report_and_its_figures_do_not_import_streamlit():
    import subprocess
    import sys

    code = (
        "import sys; import defense.report_html, defense.compare_cli, ui.charts, ui.curves, ui.compare_charts; "
        "print('streamlit' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=MODELS_DIR.parent.parent
    )
    assert out.stdout.strip() == "False", out.stderr


def test_a_setting_added_later_keeps_the_saved_keys_while_it_is_off():
    from defense.purify import PurifyConfig

    now = PurifyConfig().to_dict()
    before_anchor = {k: v for k, v in now.items() if k != "anchor"}  # what results saved before it existed hold
    assert result_store.settings_key(now) == result_store.settings_key(before_anchor)
    assert result_store.settings_key(replace(PurifyConfig(), anchor=0.01).to_dict()) != result_store.settings_key(now)
