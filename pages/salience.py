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
truth, tac_job = lab.ground_truth(), lab.tac_truth()  # queued before the slow scores (one background worker)
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
frame = salience.scores_frame(list(scores.values()))
pending = [SCORES[n].label for n in SCORES.names() if n not in scores]
if pending:
    st.caption(f"Still being measured in the background (slow on a CPU): {', '.join(pending)}.")
which_truth = st.radio(
    "Ground truth",
    ["ablation", "tac"],
    horizontal=True,
    key="w_truth",
    format_func={"ablation": "ablation (zero each neuron)", "tac": "trigger-activated change (TAC)"}.get,
    help="TAC: how far each neuron's output moves when the trigger is added (top 10% = infected)",
)
if jobs.wait_note(
    [truth, tac_job],
    "Measuring which neurons carry the backdoor (zeroing each one in turn: about 10 s, "
    "once per model). The page updates by itself.",
):
    gt, tac = truth.result(), tac_job.result()
    from defense import truth as truth_mod

    agree = truth_mod.agreement(gt, tac)
    st.caption(
        "The two truths agree: TAC ranks the ablation-infected neurons with ROC AUC "
        f"{agree['tac_auc_vs_ablation']:.2f}, and {agree['top_k_overlap']:.0%} of them are also in TAC's top 10%."
    )
    infected = gt["infected"] if which_truth == "ablation" else tac["infected"]
    frame["backdoor_effect"] = torch.cat([gt["backdoor_effect"][n] for n in lab.layers]).numpy()
    frame["infected"] = torch.cat([infected[n] for n in lab.layers]).numpy()
    left, right = st.columns(2)
    with left:
        st.plotly_chart(curves.truth_scatter(frame, "magnitude", "benign"), width="stretch", key="scatter")
    with right:
        roc, rows = [], []
        for m in scores:
            s = scores[m].suspicion()
            fpr, tpr = metrics.roc_curve(
                torch.cat([s[n] for n in lab.layers]), torch.cat([infected[n] for n in lab.layers])
            )
            q = metrics.identification_quality(scores[m], infected)
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

st.subheader("How steady is benign salience?")
stab = lab.bs_stability()
st.caption(
    "Benign salience measured on three different clean subsets (seeds 0, 1, 2). Each dot is a neuron: its rank in "
    f"its layer (1 = most suspect) on each subset. Lowest rank correlation between two subsets: "
    f"{stab['spearman_min']:.2f} (1 = the same ranking every time)."
)
ranks = pd.DataFrame(
    [
        {"layer": n, "neuron": i, "lowest rank": float(r.min()), "highest rank": float(r.max())}
        for n, rk in stab["ranks"].items()
        for i, r in enumerate(rk)
    ]
)
st.scatter_chart(ranks, x="lowest rank", y="highest rank", color="layer", height=300)

st.download_button(
    "Download all scores (CSV)",
    frame.to_csv(index=False),
    file_name=f"{lab.name}-scores.csv",
    mime="text/csv",
    key="w_scores_csv",
    help="one row per neuron: every metric, and the measured ground truth once it is ready",
)
