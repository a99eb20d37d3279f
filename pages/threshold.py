"""Threshold page: choose which neurons to mark, preview zeroing them, and the pruning curve, side by side."""

import streamlit as st

from defense.registry import SCORES
from ui import classroom, lab, measures, overview, story
from ui.charts import layers_row
from ui.curves import pruning_figure, score_label, score_labels
from ui.jobs import wait_note
from ui.state import curve_scores, intro, points, require_app, synced
from ui.theme import plot

require_app()
st.title("Choose the purification threshold")
intro(
    "The most suspect neurons are **marked**; purification then pushes their weights toward zero while it "
    "fine-tunes the rest. Mark too few and the backdoor survives; mark too many and the model forgets digits."
)

ss = st.session_state
current = lab.current_lab()
base = current.preview_evaluation()  # the previews' own images: a big model's previews use a subset
preview_test, preview_triggered = current.preview_sets
left, right = st.columns([2, 3], gap="medium")
with left:
    synced(
        st.selectbox,
        "Score",
        "threshold_metric",
        options=curve_scores(),
        format_func=score_label,
        help="which score ranks the neurons (purification with bs-… uses benign salience). "
        + SCORES[ss["threshold_metric"]].explanation,
    )
    r1, r2 = st.columns(2)
    with r1:
        synced(
            st.radio,
            "Mark by",
            "threshold_mode",
            options=["ratio", "value"],
            format_func={"ratio": "share of neurons", "value": "score cut"}.get,
            help="share: the given share of the most suspect neurons; score cut: every neuron whose normalized "
            "importance (0 = most suspect, 1 = most important in its layer) is at or below the value",
        )
    with r2:
        synced(
            st.radio,
            "Scope",
            "threshold_scope",
            options=["layer", "global"],
            format_func={"layer": "in each layer", "global": "over all layers"}.get,
            disabled=ss["threshold_mode"] == "value",
            help="for 'share of neurons': per layer, or ranked over all layers",
        )
    label = "Share of neurons to mark" if ss["threshold_mode"] == "ratio" else "Mark normalized importance up to"
    synced(st.slider, label, "threshold_value", min_value=0.0, max_value=1.0, step=lab.SLIDER_STEP)
    metric, mode, value, scope = (
        ss[k] for k in ("threshold_metric", "threshold_mode", "threshold_value", "threshold_scope")
    )
    pv = current.preview(metric, mode, value, scope)
    c1, c2, c3 = st.columns(3)
    c1.metric("Marked neurons", f"{pv['marked']} of {current.neurons}")
    # the arrow's colour says better or worse, never merely up or down; no change gets no arrow
    d_acc, d_asr = pv["clean_acc"] - base["clean_acc"], pv["asr"] - base["asr"]
    # no change gets no arrow (a red "+0.0" reads as worse); a fall in attack success is the good direction
    c2.metric("Clean accuracy if zeroed", f"{pv['clean_acc']:.1%}", points(d_acc) if round(1000 * d_acc) else None)
    c3.metric(
        "Attack success if zeroed",
        f"{pv['asr']:.1%}",
        points(d_asr) if round(1000 * d_asr) else None,
        delta_color="inverse",
    )
    marked_share = value if mode == "ratio" else pv["marked"] / current.neurons
    st.caption(story.choice_verdict(marked_share, pv["clean_acc"], pv["asr"], base))

with right:
    curve = current.pruning_curve(scope)
    if wait_note(
        [curve],
        f"Computing the pruning curves ({len(curve_scores()) * len(lab.SLIDER_GRID)} previews, once per model). "
        "The slider works meanwhile; the curve appears by itself.",
        unit="previews",
    ):
        plot(
            pruning_figure(curve.result(), marked_share, featured=metric, height=330),
            "curve",
            f"{current.name}-pruning-curve",
        )
        st.markdown(story.pruning_verdict(measures.curve_points(curve.result()), metric, base, score_labels()))

mask = current.mask(metric, mode, value, scope)
scores = current.score(metric)
importance = scores.normalized("minmax")
deep = len(current.layers) > overview.MANY_LAYERS  # side-by-side heatmaps of every layer would be dots
shown = overview.layers_to_draw(
    list(current.layers),
    importance,
    mask,
    score_label(metric),
    "threshold-overview",
    f"{current.name}-marked-overview",
    "w_threshold_layers",
    max_selections=overview.MAX_HEATMAPS,
)
if shown:
    plot(
        layers_row(
            {n: importance[n] for n in shown},
            {n: {score_label(metric): scores.layers[n]} for n in shown},
            mask,
            "importance",
            height=300,
        ),
        "threshold-heat",
        f"{current.name}-marked",
    )
st.caption(
    ("Overview: a box per layer over its neurons' normalized scores, the marked ones as red ticks. " if deep else "")
    + f"Colour: {score_label(metric)}, normalized per layer (dark = most suspect); red outlines: the marked "
    f"neurons. The preview zeroes them with no fine-tuning, on {len(preview_test):,} test and "
    f"{len(preview_triggered):,} triggered images"
    + (
        ""
        if len(preview_test) == len(current.splits.test)
        else f" (a random subset of {len(current.splits.test):,}, "
        "so that a slider move stays quick on this model; the Purify page measures on all of them)"
    )
    + "; the pruning curve does the same for every share of each layer's most suspect neurons."
)
classroom.next_step(
    story.next_step("threshold", marked=pv["marked"], score=score_label(metric)),
    classroom.next_page("pages/threshold.py"),
)
