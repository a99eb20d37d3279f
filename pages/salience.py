"""Salience page: per-layer heatmaps of benign salience and weight magnitude, ground truth, ROC, CSV."""

import pandas as pd
import streamlit as st
import torch

from defense import metrics, salience
from defense.registry import SCORES
from ui import charts, curves, jobs, state
from ui.lab import current_lab

state.require_app()
st.title("Which neurons look infected?")
state.intro(
    "Each square is one neuron (a conv channel or a hidden unit). **Benign salience** measures how much the "
    "clean-data loss would rise if the neuron were removed: neurons the normal task barely needs (low salience) "
    "are the suspects, because a backdoor lives in neurons the clean images do not use. Next to it, **weight "
    "magnitude**, the usual pruning criterion, for comparison; red outlines are the neurons marked on the "
    "Threshold page."
)

lab = current_lab()
scores = lab.scores()
bs, mag = scores["benign"], scores["magnitude"]
scale = st.radio(
    "Colour scale",
    ["minmax", "rank", "raw"],
    horizontal=True,
    key="w_salience_scale",
    format_func={"minmax": "normalized per layer", "rank": "rank per layer", "raw": "raw values"}.get,
    help="normalized and rank: 0 = most suspect neuron of its layer (dark), 1 = most important (bright)",
)
bar = "raw" if scale == "raw" else "importance"
marked = lab.threshold_mask()
bs_s, mag_s = charts.scaled(bs, scale), charts.scaled(mag, scale)
for name, nl in lab.layers.items():
    fig = charts.layer_heatmaps(
        f"{name} · {nl.size} {'channels' if nl.layer.__class__.__name__ == 'Conv2d' else 'units'}",
        [("benign salience", bs_s[name], bar), ("weight magnitude", mag_s[name], bar)],
        {"benign salience": bs.layers[name], "weight magnitude": mag.layers[name]},
        marked[name],
    )
    st.plotly_chart(fig, width="stretch", key=f"heat-{name}")

st.subheader("Does low salience find the backdoor?")
st.caption(
    "Ground truth, measured: each neuron is zeroed on its own, and the 10% whose removal most weakens the "
    "trigger are labelled infected. A good score puts them at the low end."
)
truth = lab.ground_truth()
frame = salience.scores_frame([scores[m] for m in SCORES.names()])
if jobs.wait_note(
    [truth],
    "Measuring which neurons carry the backdoor (zeroing each one in turn: about 10 s, "
    "once per model). The page updates by itself.",
):
    gt = truth.result()
    infected, measured = gt["infected"], gt["measured"]
    frame["backdoor_effect"] = torch.cat([gt["backdoor_effect"][n] for n in lab.layers]).numpy()
    frame["infected"] = torch.cat([infected[n] for n in lab.layers]).numpy()
    keep = torch.cat([measured[n] for n in lab.layers])
    if gt["sampled"]:  # over the ablation budget: a random sample was measured, and everything below is of it
        frame = frame[keep.numpy()]
        st.warning(
            f"This model has {lab.neurons:,} neurons, more than the {jobs.MAX_ABLATION_NEURONS:,} the app "
            f"ablates per model: the ground truth below is an estimate, measured on a random sample of "
            f"{int(keep.sum()):,} neurons ({gt['sampled']:.0%}).",
            icon=":material/query_stats:",
        )
    left, right = st.columns(2)
    with left:
        st.plotly_chart(curves.truth_scatter(frame, "magnitude", "benign"), width="stretch", key="scatter")
    with right:
        roc, rows = [], []
        for m in SCORES.names():
            s = scores[m].suspicion()
            fpr, tpr = metrics.roc_curve(
                torch.cat([s[n] for n in lab.layers])[keep], torch.cat([infected[n] for n in lab.layers])[keep]
            )
            q = metrics.identification_quality(scores[m], infected, measured)
            roc.append((curves.score_label(m), fpr, tpr, q["auc"]))
            rows.append({"score": curves.score_label(m), "ROC AUC": q["auc"], "precision at k": q["precision_at_k"]})
        st.plotly_chart(curves.roc_figure(roc, bold=curves.score_label("benign")), width="stretch", key="roc")
    st.caption(
        "ROC AUC: the chance that the score ranks a random infected neuron as more suspect than a random clean "
        "one (1 = perfect, 0.5 = a coin toss). Precision at k: the share of infected neurons among the k most "
        "suspect, k being the number of infected ones."
    )
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        width="content",
        column_config={
            "ROC AUC": st.column_config.NumberColumn(format="%.3f"),
            "precision at k": st.column_config.NumberColumn(format="%.3f"),
        },
    )

st.download_button(
    "Download all scores (CSV)",
    frame.to_csv(index=False),
    file_name=f"{lab.name}-scores.csv",
    mime="text/csv",
    key="w_scores_csv",
    help="one row per neuron: every metric, and the measured ground truth once it is ready",
)
