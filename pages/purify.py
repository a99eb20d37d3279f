"""Purify page: run purification live (or a baseline), overlay the runs, compare, download."""

import streamlit as st

from defense import metrics, purify
from defense.explain import trigger_share
from defense.neurons import marked_count
from defense.registry import DEFENSES
from ui import charts, curves, state
from ui.lab import current_lab
from ui.runs import POLL_S, purification_config, report_json, runs_table, start_run

state.require_app()
st.title("Purify the model")
state.intro(
    "Purification fine-tunes the model on the defender's few clean images while a penalty pushes the marked "
    "neurons' weights toward zero (**bs-ar**: benign salience + adaptive regularization, this paper's method). "
    "Watch the attack success rate fall while the clean accuracy holds; then run a baseline such as plain "
    "fine-tuning (ft) or Fine-Pruning (fp) and compare the curves."
)

ss = st.session_state
lab = current_lab()
defaults = purify.PurifyConfig()
for key, value in {
    "purify_defense": "bs-ar",
    "purify_steps": defaults.steps,
    "purify_lr": defaults.lr,
    "purify_lam": defaults.lam,
}.items():
    ss.setdefault(key, value)
runs = [r for r in ss["runs"] if r.model_key == lab.key]
busy = any(r.active for r in runs)

c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
with c1:
    state.synced(
        st.selectbox,
        "Defense",
        "purify_defense",
        options=DEFENSES.names(),
        format_func=lambda d: f"{d}: {DEFENSES[d].label}",
        help=DEFENSES[ss["purify_defense"]].explanation,
    )
with c2:
    state.synced(
        st.number_input,
        "Steps",
        "purify_steps",
        min_value=1,
        max_value=5000,
        step=50,
        help="fine-tuning steps of 64 clean images each (CLP does none)",
    )
with c3:
    state.synced(
        st.number_input, "Learning rate", "purify_lr", min_value=0.0001, max_value=1.0, step=0.005, format="%.4f"
    )
with c4:
    state.synced(
        st.number_input,
        "Penalty λ",
        "purify_lam",
        min_value=0.0,
        max_value=10.0,
        step=0.01,
        format="%.3f",
        help="strength of the penalty on the marked neurons (bs-… and mag-ar)",
    )
defense = ss["purify_defense"]
marking = DEFENSES[defense].marking
if marking is not None:
    metric = marking[0]
    marked = marked_count(lab.threshold_mask(metric))
    how = (
        f"the {ss['threshold_value']:.0%} most suspect "
        f"{'in each layer' if ss['threshold_scope'] == 'layer' else 'overall'}"
        if ss["threshold_mode"] == "ratio"
        else f"normalized importance ≤ {ss['threshold_value']:.2f}"
    )
    label = curves.score_label(metric)
    st.caption(f"Marked by {label}: {marked} of {lab.neurons} neurons ({how}), as set on the Threshold page.")


def start() -> None:
    try:
        cfg = purification_config(ss["purify_steps"], ss["purify_lr"], ss["purify_lam"])
        start_run(current_lab(), ss["purify_defense"], cfg)
    except ValueError as err:
        ss["purify_error"] = f"These settings cannot run: {err}"


def clear() -> None:
    ss["runs"] = [r for r in ss["runs"] if r.model_key != lab.key]


b1, b2, _ = st.columns([1, 1, 4])
b1.button("Start purification", type="primary", disabled=busy, key="w_start", on_click=start)
b2.button("Clear runs", disabled=busy or not runs, key="w_clear", on_click=clear)
if ss.get("purify_error"):
    st.error(ss.pop("purify_error"))
ss["_polling"] = busy


@st.fragment(run_every=POLL_S if busy else None)
def live():
    """Progress, Stop and the curves: redrawn every POLL_S seconds while a run is going, without rerunning the page."""
    now = [r for r in ss["runs"] if r.model_key == lab.key]
    for r in now:
        r.seen()
    active = [r for r in now if r.active]
    if not active and ss.get("_polling"):
        ss["_polling"] = False
        st.rerun()  # the run ended: redraw the whole page (results, downloads, Start enabled)
    for r in active:
        c1, c2 = st.columns([5, 1])
        total = max(r.steps, 1)
        text = {"starting": "preparing…", "stopping": "stopping…"}.get(r.status, f"step {r.step} of {r.steps}")
        c1.progress(min(r.step / total, 1.0), text=f"{r.label}: {text}")
        c2.button("Stop", key=f"w_stop_{r.label}", on_click=r.stop, disabled=r.status == "stopping")
    if now:
        st.plotly_chart(curves.runs_figure(now), width="stretch", key="runs")
    if now and not active:  # the table waits for the end: redrawn twice a second it costs more than it tells
        fmt = st.column_config.NumberColumn(format="%.1f%%")
        st.dataframe(
            runs_table(now),
            hide_index=True,
            width="stretch",
            key="runs-table",
            column_config={
                k: fmt for k in ("accuracy before", "accuracy now", "attack success before", "attack success now")
            },
        )
        for r in now:
            if r.status == "error":
                st.error(f"{r.label} failed: {r.error}")
    if not now:
        st.info("No run yet: choose a defense and press **Start purification**. Curves appear here as it trains.")


live()

finished = [r for r in runs if r.status in ("done", "stopped", "abandoned") and r.run is not None and r.evaluations()]
if finished:
    st.subheader("Before and after")
    by_label = {r.label: r for r in finished[::-1]}
    if ss.get("_finished") != list(by_label):  # a run just ended: show it
        ss["_finished"] = list(by_label)
        ss["w_result_run"] = next(iter(by_label))
    pick = by_label[
        st.selectbox("Run", list(by_label), format_func=lambda k: f"{k} ({by_label[k].status})", key="w_result_run")
    ]
    before, after = pick.before_after()
    c1, c2, c3 = st.columns(3)
    c1.metric("Clean accuracy", f"{after['clean_acc']:.1%}", state.points(after["clean_acc"] - before["clean_acc"]))
    c2.metric(
        "Attack success rate", f"{after['asr']:.1%}", state.points(after["asr"] - before["asr"]), delta_color="inverse"
    )
    c3.metric(f"Time for {pick.step} steps", f"{pick.seconds:.1f} s")
    n = 8
    if pick.attr_after is None:
        pick.attr_after = lab.attribution(pick.run.model, n=n)
    x = lab.triggered.x[:n]
    pred_b, pred_a = metrics.predict(lab.model, x), metrics.predict(pick.run.model, x)
    attr_before = lab.attribution(n=n)
    share_b = trigger_share(attr_before, lab.bundle.trigger)
    share_a = trigger_share(pick.attr_after, lab.bundle.trigger)
    st.caption(
        f"Integrated gradients toward the target label {lab.target} on triggered images, before and after "
        "(each map scaled to its own maximum); titles are the predictions. After purification the model should "
        "look at the digit, not at the trigger."
        + (
            f" Share of the attribution on the trigger: **{share_b[0]:.0%} before, {share_a[0]:.0%} after** "
            f"(the trigger covers {share_b[1]:.1%} of the image)."
            if share_b and share_a
            else ""
        )
    )
    st.plotly_chart(
        charts.image_grid(
            [
                ("triggered", x.amax(1).numpy(), [""] * n),
                ("before", attr_before, [f"→ {p}" for p in pred_b.tolist()]),
                ("after", pick.attr_after, [f"→ {p}" for p in pred_a.tolist()]),
            ],
            colorscale=["gray", "Hot", "Hot"],
        ),
        width="stretch",
        key="attr-before-after",
    )
    d1, d2, _ = st.columns([2, 2, 3])
    d1.download_button(
        "Download purified model (.zip)",
        lambda: pick.bundle_zip(lab),
        file_name=f"{lab.name}-{pick.defense}.zip",
        mime="application/zip",
        key="w_dl_bundle",
    )
    d2.download_button(
        "Download report (JSON)",
        report_json(pick.report(lab)),
        file_name=f"{lab.name}-{pick.defense}-report.json",
        mime="application/json",
        key="w_dl_report",
    )
