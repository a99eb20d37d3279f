"""Threshold page: choose which neurons to mark, preview zeroing them, and the pruning curve."""

import streamlit as st

from defense.registry import SCORES
from ui import charts, curves, jobs, state
from ui.lab import SLIDER_GRID, SLIDER_STEP, current_lab

state.require_app()
st.title("Choose the purification threshold")
state.intro(
    "The threshold decides which neurons count as suspect: the ones with the lowest scores are **marked**, and "
    "purification then pushes their weights toward zero while fine-tuning the rest. Mark too few and the backdoor "
    "survives; mark too many and the model forgets how to read digits. Move the slider and watch both numbers."
)

ss = st.session_state
lab = current_lab()
c1, c2, c3 = st.columns(3)
with c1:
    state.synced(
        st.selectbox,
        "Score",
        "threshold_metric",
        options=state.curve_scores(),
        format_func=curves.score_label,
        help="which score ranks the neurons (purification with bs-… uses benign salience). "
        + SCORES[ss["threshold_metric"]].explanation,
    )
with c2:
    state.synced(
        st.radio,
        "Mark by",
        "threshold_mode",
        options=["ratio", "value"],
        horizontal=True,
        format_func={"ratio": "share of neurons", "value": "score cut"}.get,
        help="share: the given share of the most suspect neurons; score cut: every neuron whose normalized "
        "importance (0 = most suspect, 1 = most important in its layer) is at or below the value",
    )
with c3:
    state.synced(
        st.radio,
        "Scope",
        "threshold_scope",
        options=["layer", "global"],
        horizontal=True,
        format_func={"layer": "in each layer", "global": "over all layers"}.get,
        disabled=ss["threshold_mode"] == "value",
        help="for 'share of neurons': per layer, or ranked over all layers",
    )
label = (
    "Share of neurons to mark" if ss["threshold_mode"] == "ratio" else "Mark neurons with normalized importance up to"
)
state.synced(st.slider, label, "threshold_value", min_value=0.0, max_value=1.0, step=SLIDER_STEP)

metric, mode, value, scope = ss["threshold_metric"], ss["threshold_mode"], ss["threshold_value"], ss["threshold_scope"]
base = lab.evaluation()
pv = lab.preview(metric, mode, value, scope)
c1, c2, c3 = st.columns(3)
c1.metric("Marked neurons", f"{pv['marked']} of {lab.neurons}")
c2.metric("Clean accuracy if zeroed", f"{pv['clean_acc']:.1%}", state.points(pv["clean_acc"] - base["clean_acc"]))
c3.metric("Attack success if zeroed", f"{pv['asr']:.1%}", state.points(pv["asr"] - base["asr"]), delta_color="inverse")
st.caption(
    "Preview: the marked neurons' outputs are set to zero, with no fine-tuning, on the 1,000 test images. "
    "Purification does better than this, because it retrains the rest of the network."
)

mask = lab.mask(metric, mode, value, scope)
scores = lab.score(metric)
raw = {n: {curves.score_label(metric): v} for n, v in scores.layers.items()}
st.plotly_chart(
    charts.layers_row(scores.normalized("minmax"), raw, mask, "importance"), width="stretch", key="threshold-heat"
)
st.caption(
    f"Colour: {curves.score_label(metric)}, normalized per layer (dark = most suspect). Red outlines: marked neurons."
)

st.subheader("Pruning curve")
drawn = len(state.curve_scores())
st.caption(
    "Accuracy and attack success when the given share of each layer's most suspect neurons is zeroed, for "
    f"{state.in_words(drawn)} scores. A good score makes the attack collapse long before the accuracy does."
)
curve = lab.pruning_curve(scope)
previews = drawn * len(SLIDER_GRID)
if jobs.wait_note(
    [curve],
    f"Computing the pruning curves ({previews} previews, about {round(previews / 3, -1):.0f} s, once per model). "
    "The slider works meanwhile; the curve appears by itself.",
):
    share = value if mode == "ratio" else pv["marked"] / lab.neurons
    st.plotly_chart(curves.pruning_figure(curve.result(), share), width="stretch", key="curve")
