"""The classroom pieces without Streamlit: sentences follow the numbers, one colour per meaning, readable
chart text, outlines inside their cells, the trigger view, 2x PNG downloads."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch

from defense import attacks
from ui import figures, palette, story, theme

LABELS = {"benign": "benign salience", "magnitude": "weight magnitude", "clp": "channel Lipschitz (CLP)"}


def test_salience_verdict_follows_the_aucs():
    loses = story.salience_verdict({"benign": 0.44, "magnitude": 0.61, "clp": 0.73}, "benign", LABELS)
    wins = story.salience_verdict({"benign": 0.81, "magnitude": 0.61, "clp": 0.73}, "benign", LABELS)
    assert loses != wins
    assert loses.startswith("No:") and "worse than chance (AUC 0.44)" in loses and "CLP) does best (0.73)" in loses
    assert wins.startswith("Yes:") and "(AUC 0.81)" in wins and "best of the 3 scores" in wins and "0.73" in wins
    partly = story.salience_verdict({"benign": 0.6, "clp": 0.5}, "benign", LABELS)
    assert partly.startswith("Partly:") and "somewhat better than chance" in partly
    assert "still being measured" not in loses + wins + partly
    # while slow scores are still running, the comparison is one of the scores measured so far, and says so
    waiting = story.salience_verdict({"benign": 0.44, "clp": 0.73}, "benign", LABELS, pending=4)
    assert "so far channel Lipschitz (CLP) does best (0.73)" in waiting
    assert waiting.endswith("(0.73), while 4 slower scores are still being measured in the background.")
    leading = story.salience_verdict({"benign": 0.81, "clp": 0.73}, "benign", LABELS, pending=1)
    assert "best of the 2 scores measured so far" in leading and "1 slower score is still being" in leading


def test_stability_verdict_follows_the_correlation_and_the_hardest_images_share():
    held = story.stability_verdict(0.12, {"images": 10, "of": 200, "share": 0.91, "spearman": 0.99})
    assert "reorders the neurons" in held and "0.12" in held
    assert "10 hardest of its 200 images" in held and "91%" in held and "few hard images" in held
    spread = story.stability_verdict(0.85, {"images": 10, "of": 200, "share": 0.2, "spearman": 0.4})
    assert "much the same on every subset" in spread and "spread over many images" in spread
    assert "few hard images" not in spread and "median" not in spread
    mixed = story.stability_verdict(0.5, {"images": 10, "of": 200, "share": 0.7, "spearman": 0.6})
    assert "carry 70% of it" in mixed and "other images still move its order" in mixed
    with_median = story.stability_verdict(0.12, {"images": 10, "of": 200, "share": 0.91, "spearman": 0.99}, 0.93)
    assert with_median.startswith(held) and "median over images" in with_median and "is steadier" in with_median
    assert "0.93" in with_median
    worse = story.stability_verdict(0.85, {"images": 10, "of": 200, "share": 0.2, "spearman": 0.4}, 0.5)
    assert "is no steadier" in worse


def curve(points):
    return [{"ratio": r, "clean_acc": a, "asr": s} for r, a, s in points]


def test_pruning_verdict_says_which_goes_first():
    base = {"clean_acc": 0.979, "asr": 1.0}
    bs = curve([(0, 0.979, 1.0), (0.1, 0.9, 0.9), (0.3, 0.338, 0.384), (0.5, 0.2, 0.1)])
    mag = curve([(0, 0.979, 1.0), (0.1, 0.97, 0.08), (0.3, 0.6, 0.02), (0.5, 0.3, 0.0)])
    text = story.pruning_verdict({"benign": bs, "magnitude": mag}, "benign", base, LABELS)
    assert "accuracy goes first" in text and "50% zeroed" in text and "20.0%" in text
    assert "Weight magnitude does better here: 8.0% attack at 97.0% accuracy with 10% zeroed" in text
    text = story.pruning_verdict({"benign": bs, "magnitude": mag}, "magnitude", base, LABELS)
    assert "the attack collapses first" in text and "does better" not in text
    never = story.pruning_verdict({"benign": bs[:3]}, "benign", base, LABELS)
    assert "never brings the attack below 20%" in never and "38.4%" in never
    assert "no backdoor" in story.pruning_verdict({"benign": bs}, "benign", {"clean_acc": 0.9, "asr": 0.1}, LABELS)


def test_choice_verdict():
    base = {"clean_acc": 0.979, "asr": 1.0}
    assert "costs accuracy (33.8%) before it breaks the attack (38.4%" in story.choice_verdict(0.3, 0.338, 0.384, base)
    assert "already breaks the attack" in story.choice_verdict(0.1, 0.97, 0.05, base)
    assert "leaves the attack working" in story.choice_verdict(0.1, 0.97, 0.9, base)


def test_run_verdict_reads_the_history():
    dip = [
        {"step": 0, "clean_acc": 0.979, "asr": 1.0},
        {"step": 20, "clean_acc": 0.51, "asr": 0.3},
        {"step": 300, "clean_acc": 0.968, "asr": 0.005},
    ]
    text = story.run_verdict("1. bs-ar", dip)
    assert (
        text
        == "1. bs-ar: accuracy dipped to 51.0% at step 20 and recovered to 96.8%; the attack is gone (100.0% → 0.5%)."
    )
    held = [{"step": 0, "clean_acc": 0.979, "asr": 1.0}, {"step": 300, "clean_acc": 0.956, "asr": 0.428}]
    assert "accuracy held" in story.run_verdict("ft", held) and "weakened" in story.run_verdict("ft", held)
    assert "stopped before its first step" in story.run_verdict("ft", held[:1])
    fell = [{"step": 0, "clean_acc": 0.98, "asr": 1.0}, {"step": 5, "clean_acc": 0.5, "asr": 0.9}]
    assert "accuracy fell from 98.0% to 50.0%" in story.run_verdict("x", fell) and "survives" in story.run_verdict(
        "x", fell
    )


def test_runs_and_pairs():
    before = {"clean_acc": 0.979, "asr": 1.0}
    runs = [
        ("1. bs-ar", before, {"clean_acc": 0.968, "asr": 0.005}),
        ("2. ft", before, {"clean_acc": 0.956, "asr": 0.43}),
    ]
    assert "1. bs-ar leaves the least attack (0.5%)" in story.runs_comparison(runs)
    assert story.runs_comparison(runs[:1]) == ""
    text = story.pair_verdict(("ft", {"clean_acc": 0.956, "asr": 0.428}), ("ft-kd", {"clean_acc": 0.971, "asr": 0.05}))
    assert "distillation removes 37.8 more points of attack" in text


def test_attribution_verdicts():
    assert "far more than its size" in story.attribution_verdict(0.4, 0.011, 0)
    assert "not concentrated" in story.attribution_verdict(0.02, 0.011, 0)
    assert "cannot single out" in story.attribution_verdict(None, None, 0)
    assert "no longer leans" in story.purified_attribution_verdict(0.6, 0.05, 0.011, 0)
    assert "still draws" in story.purified_attribution_verdict(0.6, 0.5, 0.011, 0)


def test_every_page_has_a_next_step():
    for page in ("model", "salience", "threshold", "purify", "compare"):
        assert story.next_step(page, neurons=112).startswith("Next")
    assert "bs-ar-kd" in story.next_step("purify", runs=1, missing="bs-ar-kd")
    with pytest.raises(ValueError):
        story.next_step("nowhere")


def test_one_colour_per_meaning_and_readable_text():
    colours = [palette.INFECTED, palette.CHOICE, *palette.SCORES.values()]
    assert len(set(colours)) == len(colours)
    assert not set(palette.RUNS) & set(colours)  # runs never share a score's or the infected colour
    assert palette.score_color("benign") == palette.SCORES["benign"] and palette.score_color("new-score")
    assert palette.contrast(palette.TEXT) >= 4.5 and palette.contrast(palette.MUTED_TEXT) >= 4.5
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1]))
    fig.add_annotation(text="small", font=dict(size=9))
    t = theme.style(fig).layout.template.layout
    assert t.font.size >= theme.MIN_FONT and t.xaxis.tickfont.size >= theme.MIN_FONT
    assert fig.layout.annotations[0].font.size >= theme.MIN_FONT
    assert palette.contrast(t.xaxis.tickfont.color) >= 4.5
    big = theme.style(go.Figure(layout=dict(height=300)), presenter=True)
    assert big.layout.height == 390 and big.layout.template.layout.font.size > t.font.size


def test_downloads_are_2x_png_with_a_name():
    cfg = theme.chart_config("mnist-badnets ROC / scores")
    assert cfg["toImageButtonOptions"] == {"format": "png", "scale": 2, "filename": "mnist-badnets-ROC-scores"}


def test_outlines_sit_inside_their_cells():
    shapes = figures.outline_shapes([0, 5, 7], cols=4, subplot=2)
    assert len(shapes) == 3 and all(s["xref"] == "x2" and s["yref"] == "y2" for s in shapes)
    for s, (row, col) in zip(shapes, [(0, 0), (1, 1), (1, 3)]):
        assert col - 0.5 < s["x0"] < s["x1"] < col + 0.5 and row - 0.5 < s["y0"] < s["y1"] < row + 0.5
    fig = go.Figure(layout=dict(shapes=shapes))
    assert figures.outlined_count(fig) == 3 and figures.outlined_count(fig.to_plotly_json()) == 3


@pytest.mark.parametrize("kind", ["badnets", "blend", "sig", "wanet"])
def test_trigger_view_shows_every_kind(kind):
    trigger = attacks.make_trigger(kind, [1, 28, 28])
    x = torch.rand(1, 28, 28) * 0.5
    panels = figures.trigger_panels(trigger, x)
    titles = [p[0] for p in panels]
    assert titles[-3:-1] == ["clean", "triggered"] and titles[-1].startswith("change,<br>×")
    diff = panels[-1][1]
    assert abs(abs(diff).max() - 1) < 1e-5  # amplified to full scale, however faint the trigger
    if kind in ("badnets", "blend"):
        assert titles[:2] == ["mask", "pattern"]
    if kind == "badnets":
        assert "patch,<br>enlarged" in titles and panels[2][1].shape[0] < 28  # the patch, cropped
    if kind == "wanet":
        assert titles[0].startswith("displacement")
        assert any(t.type == "scatter" for t in figures.trigger_figure(trigger, x).data)  # arrows
    assert len(figures.trigger_figure(trigger, x).data) >= len(panels)
