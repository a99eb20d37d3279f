"""Salience page: per-layer heatmaps of benign salience and weight magnitude, ground truth, ROC, CSV."""

import pandas as pd
import streamlit as st
import torch

from defense import metrics, salience
from defense.registry import SCORES
from defense.truth import agreement
from ui import classroom, lab, measures, overview, palette, story
from ui.charts import layer_heatmaps, scaled
from ui.curves import roc_figure, score_label, score_labels, truth_scatter
from ui.figures import trigger_figure, trigger_sizes_figure
from ui.jobs import rerun_when_any_done, wait_note
from ui.state import intro, require_app
from ui.theme import plot

FEATURED = "benign"  # the paper's score: the page asks whether it finds the backdoor

require_app()
st.title("Which neurons look infected?")
intro(
    "Each square is one neuron (a conv channel or a hidden unit). **Benign salience** estimates how much the "
    "clean-data loss would rise if the neuron were removed; the paper marks the neurons with the lowest as the "
    "suspects. Beside it, **weight magnitude**, the usual pruning criterion. Red outlines: the neurons marked on "
    "the Threshold page. Whether low salience really points at the backdoor is measured below."
)

current = lab.current_lab()
# the slow scores still running, taken before the scores are read: one that lands after this is either drawn
# already or brings the page back (below), never missed
running = {name: job for name, job in current.slow_jobs().items() if not job.done()}
scores = current.scores()
found = measures.identification(current)
aucs = {m: q["auc"] for m, q in found.items()} if found else None
drawn = set(scores) & set(found if found is not None else scores)  # in every part of this run of the page
pending = sum(name not in drawn for name in running)
if aucs:  # the answer first, in words, from this model's measurement
    st.info(story.salience_verdict(aucs, FEATURED, score_labels(), pending), icon=":material/fact_check:")
rerun_when_any_done(list(running.values()))  # each slow score joins the answer, ROC and its section as it lands

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
marked = current.threshold_mask()
bs_s, mag_s = scaled(bs, scale), scaled(mag, scale)
shown = overview.layers_to_draw(  # a deep network: one overview row per layer, heatmaps on demand
    list(current.layers),
    scaled(bs, "rank" if scale == "raw" else scale),
    marked,
    "benign salience",
    "overview",
    f"{current.name}-layer-overview",
    "w_salience_layers",
)
for name in shown:
    nl = current.layers[name]
    fig = layer_heatmaps(
        f"{name} · {nl.size} {'channels' if nl.layer.__class__.__name__ == 'Conv2d' else 'units'}",
        [("benign salience", bs_s[name], bar), ("weight magnitude", mag_s[name], bar)],
        {"benign salience": bs.layers[name], "weight magnitude": mag.layers[name]},
        marked[name],
        height=280,
    )
    plot(fig, f"heat-{name}", f"{current.name}-{name}-salience")

st.subheader("Does low salience find the backdoor?")
st.caption(
    "Ground truth, measured: each neuron is zeroed on its own, and the 10% whose removal most weakens the "
    "trigger are labelled infected (red in the scatter). ROC AUC: the chance that a score ranks a random infected "
    "neuron as more suspect than a random clean one (1 = perfect, 0.5 = a coin toss)."
)
frame = salience.scores_frame([scores[m] for m in SCORES.names() if m in scores])  # slow ones once measured
truth = current.ground_truth()
ready = found is not None and truth.done()
if not ready and wait_note(
    [truth],
    f"Measuring which neurons carry the backdoor (zeroing each of the {current.neurons:,} in turn, once per "
    "model). The page updates by itself.",
    unit="neurons zeroed",
):
    st.rerun()  # measured just now: draw the page again, the answer at the top included
if ready:
    gt = truth.result()
    frame["backdoor_effect"] = torch.cat([gt["backdoor_effect"][n] for n in current.layers]).numpy()
    frame["infected"] = torch.cat([gt["infected"][n] for n in current.layers]).numpy()
    if gt["sampled"]:  # over the ablation budget: a random sample was measured, and everything below is of it
        keep = torch.cat([gt["measured"][n] for n in current.layers])
        frame = frame[keep.numpy()]
        st.warning(
            f"This model has {current.neurons:,} neurons, more than the app ablates per model: the ground "
            f"truth below is an estimate, measured on a random sample of {int(keep.sum()):,} neurons "
            f"({gt['sampled']:.0%}) with {gt.get('images', 0)} triggered and {gt.get('images', 0)} clean images.",
            icon=":material/query_stats:",
        )
    left, right = st.columns([3, 2])
    with left:
        curves = [(score_label(m), q["fpr"], q["tpr"], q["auc"]) for m, q in found.items()]
        colors = [palette.score_color(m) for m in found]
        plot(roc_figure(curves, score_label(FEATURED), colors), "roc", f"{current.name}-roc")
    with right:
        st.markdown(story.salience_verdict(aucs, FEATURED, score_labels(), pending))
        rows = [
            {"score": score_label(m), "ROC AUC": q["auc"], "precision at k": q["precision_at_k"]}
            for m, q in found.items()
        ]
        st.dataframe(
            pd.DataFrame(rows),
            hide_index=True,
            width="stretch",
            column_config={  # the numbers narrow: at 1280 px the last column was cut to "precision at"
                "score": st.column_config.TextColumn(width="medium"),
                "ROC AUC": st.column_config.NumberColumn(format="%.2f", width="small"),
                "precision at k": st.column_config.NumberColumn(
                    "P@k",
                    width="small",
                    format="%.2f",
                    help="the share of infected neurons among the k most suspect, k = how many are infected",
                ),
            },
        )
    plot(truth_scatter(frame, "magnitude", "benign"), "scatter", f"{current.name}-salience-vs-magnitude")

st.subheader("A second ground truth: trigger-activated change")
tac_job = current.tac_truth()
if ready and wait_note([tac_job], "Measuring how much each neuron reacts to the trigger (one pass)."):
    tac = tac_job.result()
    agree = agreement(gt, tac)
    st.caption(
        "Trigger-activated change (TAC): per neuron, how much its output changes when the trigger is added to "
        "clean test images; the 10% that change most are called infected. Where the two truths agree, a "
        f"conclusion does not rest on one definition. Here TAC ranks the ablation-infected neurons at AUC "
        f"{agree['tac_auc_vs_ablation']:.2f}, and {agree['top_k_overlap']:.0%} of them are also TAC-infected."
    )
    tac_rows = []
    for m in found:
        tq = metrics.identification_quality(scores[m], tac["infected"])
        tac_rows.append({"score": score_label(m), "AUC vs ablation": found[m]["auc"], "AUC vs TAC": tq["auc"]})
    st.dataframe(
        pd.DataFrame(tac_rows),
        hide_index=True,
        width="stretch",
        column_config={c: st.column_config.NumberColumn(format="%.2f") for c in ("AUC vs ablation", "AUC vs TAC")},
    )

st.subheader("The trigger, reverse-engineered from clean images")
inversion = scores.get("inversion")
if inversion is None:  # a slow score: the background worker measures it after the page's own work
    st.caption(
        f"{SCORES['inversion'].label}: for every label, the smallest mask and pattern that send clean images of "
        "other labels to it. Being measured in the background (an optimisation per label: slow on a CPU); it "
        "appears here, and in the ROC above, when it is done."
    )
else:
    found_trigger = inversion.details
    left, right = st.columns([3, 2])
    with left:
        plot(
            trigger_figure(found_trigger["trigger"], current.splits.clean.x[0]),
            "reversed-trigger",
            f"{current.name}-reversed-trigger",
        )
    with right:
        plot(
            trigger_sizes_figure(found_trigger["sizes"], found_trigger["suspected_target"]),
            "reversed-sizes",
            f"{current.name}-reversed-trigger-sizes",
        )
    st.markdown(story.reversed_trigger_verdict(found_trigger, current.target))
    st.caption(
        "Neural Cleanse (Wang et al. 2019): a backdoor is a shortcut to its target, so that label needs a much "
        "smaller trigger than any other. The inversion score then zeroes each neuron on clean images carrying this "
        "reversed trigger; the neurons whose loss most weakens its pull are the suspects. Found from the clean "
        "images alone: the real trigger (Model page) was never shown to it."
    )

st.subheader("How steady is benign salience?")
stab_job = current.bs_stability()
if wait_note(
    [stab_job], "Measuring benign salience on two more clean subsets, and per image (seconds, once it starts)."
):
    stab = stab_job.result()
    st.caption(
        "Benign salience measured on three different clean subsets (seeds 0, 1, 2). Each dot is a neuron: the lowest "
        "and highest rank it gets in its layer (1 = most suspect) over the three. Lowest rank correlation between two "
        f"subsets: {stab['spearman_min']:.2f} (1 = the same ranking every time)."
    )
    st.markdown(story.stability_verdict(stab["spearman_min"], stab["hardest"], stab["median_spearman_min"]))
    st.scatter_chart(
        pd.DataFrame(
            [
                {"layer": n, "neuron": i, "lowest rank": float(r.min()), "highest rank": float(r.max())}
                for n, rk in stab["ranks"].items()
                for i, r in enumerate(rk)
            ]
        ),
        x="lowest rank",
        y="highest rank",
        color="layer",
        height=300,
    )

st.download_button(
    "Download all scores (CSV)",
    frame.to_csv(index=False),
    file_name=f"{current.name}-scores.csv",
    mime="text/csv",
    key="w_scores_csv",
    help="one row per neuron: every metric, and the measured ground truth once it is ready",
)
aucs = {m: q["auc"] for m, q in found.items()} if found else None
best = max(aucs, key=aucs.get) if aucs else None
classroom.next_step(
    story.next_step(
        "salience",
        best=score_label(best) if best else None,
        featured=score_label(FEATURED),
        featured_label=score_label(FEATURED),
    ),
    classroom.next_page("pages/salience.py"),
)
