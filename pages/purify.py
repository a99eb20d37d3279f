"""Purify page: run purification live (or a baseline), overlay the runs, say what each did, download."""

from dataclasses import replace

import streamlit as st

from defense import metrics
from defense.baselines import recommended, settings_for
from defense.explain import trigger_share
from defense.neurons import marked_count
from defense.purify import PurifyConfig
from defense.registry import DEFENSES
from ui import classroom, jobs, lab, redraw, story
from ui.charts import image_grid
from ui.curves import runs_figure, score_label
from ui.palette import ATTRIBUTION
from ui.runs import POLL_S, marking_for, purification_config, report_json, runs_table, start_run
from ui.state import intro, points, require_app, synced
from ui.theme import plot

require_app()
st.title("Purify the model")
RECOMMENDED = recommended()
intro(
    "Purification fine-tunes a copy of the model on the defender's clean images while a penalty pushes the "
    f"marked neurons' weights toward zero. The first choice, **{RECOMMENDED.name}**, marks neurons by "
    f"{score_label(RECOMMENDED.marking[0])}; **bs-ar** is the paper's method as published; **-kd** runs add our "
    "self-distillation. Does the attack fall, and does accuracy hold? The curves answer for this model."
)

ss = st.session_state
current = lab.current_lab()
defaults = PurifyConfig()
for key, value in {
    "purify_defense": RECOMMENDED.name,
    "purify_steps": defaults.steps,
    "purify_lr": defaults.lr,
    "purify_lam": defaults.lam,
}.items():
    ss.setdefault(key, value)
runs = [r for r in ss["runs"] if r.model_key == current.key]
busy = any(r.active for r in runs)


def tag(name: str) -> str:
    d = DEFENSES[name]
    return name + (" · the paper" if d.paper else "") + (" · recommended" if d.recommended else "")


def start() -> None:
    try:
        cfg = purification_config(ss["purify_steps"], ss["purify_lr"], ss["purify_lam"])
        start_run(lab.current_lab(), ss["purify_defense"], cfg)
    except ValueError as err:
        ss["purify_error"] = f"These settings cannot run: {err}"


c1, c2, c3, c4, c5 = st.columns([3, 1.2, 1.2, 1.2, 1.6], vertical_alignment="bottom")
with c1:
    synced(
        st.selectbox,
        "Defense",
        "purify_defense",
        options=[RECOMMENDED.name] + [d for d in DEFENSES.names() if d != RECOMMENDED.name],
        format_func=tag,
        help=DEFENSES[ss["purify_defense"]].explanation,
    )
with c2:
    synced(
        st.number_input,
        "Steps",
        "purify_steps",
        min_value=1,
        max_value=5000,
        step=50,
        help=f"fine-tuning steps of up to {settings_for(ss['purify_defense'], defaults).batch_size} clean images each "
        "for this defense (CLP does none)",
    )
with c3:
    synced(
        st.number_input,
        "Learning rate",
        "purify_lr",
        min_value=0.0001,
        max_value=1.0,
        step=0.005,
        format="%.4f",
        help="SGD with momentum, decayed to zero over the steps. 0.02 was chosen on the small CNNs. On the bundled "
        "PreAct-ResNet-18 nc-ar, in its batches of 200, loses −0.1–0.3 points of clean accuracy at 0.02; in batches "
        "of 64, as the other defenses fine-tune, it lost 2.0–3.6 points at 0.02 and 0.3–0.5 at 0.005, the attack "
        "removed every time (docs/METHOD.md): with small batches a deep network may need a smaller rate",
    )
with c4:
    synced(
        st.number_input,
        "Penalty λ",
        "purify_lam",
        min_value=0.0,
        max_value=10.0,
        step=0.01,
        format="%.3f",
        help="strength of the penalty on the marked neurons (defenses with AR, L1 or L2)",
    )
c5.button("Start purification", type="primary", disabled=busy, key="w_start", on_click=start, width="stretch")
defense = DEFENSES[ss["purify_defense"]]
note = f"**{defense.name}**: {defense.label}."
metric = defense.marking[0] if defense.marking is not None else None
if metric is not None and metric not in current.scores():  # a slow score not measured yet: the page goes on
    job = current.slow_score(metric, low=False)
    if job.done() and job.exception() is not None:
        note += f" {score_label(metric)} could not be measured: {job.exception()}"
    else:
        note += (
            f" Marked by {score_label(metric)}, which is being measured in the background (slow on a CPU): how many "
            "neurons it marks appears here when it is done. A run started now waits for it."
        )
        jobs.rerun_when_any_done([job])
elif metric is not None:
    mode, value, scope = marking_for(defense.name)
    if mode == "ratio":
        share = settings_for(defense.name, replace(defaults, ratio=value)).ratio  # its own share, if it has one
        marked = marked_count(current.mask(metric, "ratio", share, scope))
        how = f"the {share:.0%} most suspect " + ("in each layer" if scope == "layer" else "overall")
        own = f"its own share while the Threshold slider is at {defaults.ratio:.0%}"
        source = "as set on Threshold" if share == value else own
        if ss["threshold_mode"] == "value":  # the cut was set on another score's scale
            source = (
                f"its own share: the score cut set on Threshold is on {score_label(ss['threshold_metric'])}'s "
                "scale, not this score's"
            )
    else:
        marked = marked_count(current.threshold_mask(metric))
        how, source = f"normalized importance ≤ {value:.2f}", "as set on Threshold"
    note += f" Marked by {score_label(metric)}: {marked} of {current.neurons} neurons ({how}), {source}."
own = settings_for(defense.name, replace(defaults, lam=ss["purify_lam"]))  # a defense's own penalty, if any
if own.lam != ss["purify_lam"] or own.knee_scale != defaults.knee_scale:
    knee = f", AR's knee at {own.knee_scale:g}× each tensor's RMS" if own.knee_scale != defaults.knee_scale else ""
    note += f" Its own penalty: λ {own.lam:g}{knee}, while Penalty λ is left at {defaults.lam:g}."
st.caption(note, help=defense.explanation)
if ss.get("purify_error"):
    st.error(ss.pop("purify_error"))


def ended_runs(of_model: list) -> tuple:
    """What a full run of the page shows results of: the runs of this model that are over."""
    return tuple((r.label, r.status) for r in of_model if not r.active)


ended = ended_runs(runs)  # as this run sees them: what its end marks as drawn
poll = redraw.polling("purify", busy, ended)


@st.fragment(run_every=POLL_S if poll else None)
def live():
    """Progress, Stop and the curves: redrawn every POLL_S seconds while a run is going, without rerunning the page."""
    now = [r for r in ss["runs"] if r.model_key == current.key]
    for r in now:
        r.seen()
    active = [r for r in now if r.active]
    if not active:  # the run ended: redraw the whole page (results, downloads, Start enabled)
        redraw.ask_if_needed("purify", ended_runs(now))
    for r in active:
        p1, p2 = st.columns([6, 1])
        total = max(r.steps, 1)
        text = {"starting": "preparing…", "stopping": "stopping…"}.get(r.status, f"step {r.step} of {r.steps}")
        p1.progress(min(r.step / total, 1.0), text=f"{r.label}: {text} ({r.settings})")
        p2.button("Stop", key=f"w_stop_{r.label}", on_click=r.stop, disabled=r.status == "stopping")
    if now:
        plot(runs_figure(now, height=290), "runs", f"{current.name}-purification-runs")
        st.caption(
            "Left: the plain cross-entropy of each training batch (no penalty, no distillation), the loss every "
            "defense shares; middle and right: clean accuracy and attack success on the 1,000 test images."
        )
    if now and not active:  # the table waits for the end: redrawing it twice a second costs more than it tells
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
    for r in finished:  # what each run did, read from its own history
        st.markdown("- " + story.run_verdict(f"**{r.label}** ({r.settings})", r.evaluations()))
    results = [(r.label, *r.before_after()) for r in finished if len(r.evaluations()) > 1]
    comparison = story.runs_comparison(results)
    if comparison:
        st.markdown(comparison)
    last = {r.defense: r for r in finished}  # the latest run of each defense
    for name, r in last.items():
        if name.endswith("-kd") and name[:-3] in last:
            plain = last[name[:-3]]
            st.markdown(story.pair_verdict((plain.label, plain.before_after()[1]), (r.label, r.before_after()[1])))
    classroom.confirm_button(
        "Clear runs",
        "w_clear",
        lambda: ss.__setitem__("runs", [r for r in ss["runs"] if r.model_key != current.key]),
        f"Forget the {len(runs)} run{'s' if len(runs) != 1 else ''} of this model, with "
        f"{'their' if len(runs) != 1 else 'its'} curves? This cannot be undone.",
        disabled=busy,
    )

    st.subheader("Before and after")
    by_label = {r.label: r for r in finished[::-1]}
    if ss.get("_finished") != list(by_label):  # a run just ended: show it
        ss["_finished"] = list(by_label)
        ss["w_result_run"] = next(iter(by_label))
    pick = by_label[
        st.selectbox("Run", list(by_label), format_func=lambda k: f"{k} ({by_label[k].status})", key="w_result_run")
    ]
    st.caption(pick.full_label)
    before, after = pick.before_after()
    d_acc, d_asr = after["clean_acc"] - before["clean_acc"], after["asr"] - before["asr"]
    m1, m2, m3 = st.columns(3)
    m1.metric("Clean accuracy", f"{after['clean_acc']:.1%}", points(d_acc) if round(1000 * d_acc) else None)
    m2.metric(
        "Attack success rate",
        f"{after['asr']:.1%}",
        points(d_asr) if round(1000 * d_asr) else None,
        delta_color="inverse",
    )
    m3.metric(f"Time for {pick.step} steps", f"{pick.seconds:.1f} s")
    n = 8
    if pick.attr_after is None:
        pick.attr_after = current.attribution(pick.run.model, n=n)
    x = current.triggered.x[:n]
    pred_b, pred_a = metrics.predict(current.model, x), metrics.predict(pick.run.model, x)
    attr_before = current.attribution(n=n)
    share_b = trigger_share(attr_before, current.bundle.trigger)
    share_a = trigger_share(pick.attr_after, current.bundle.trigger)
    st.markdown(
        story.purified_attribution_verdict(
            share_b[0] if share_b else None,
            share_a[0] if share_a else None,
            share_b[1] if share_b else None,
            current.target,
        )
    )
    plot(
        image_grid(
            [
                ("triggered", x.amax(1).numpy(), [""] * n),
                ("before", attr_before, [f"→ {p}" for p in pred_b.tolist()]),
                ("after", pick.attr_after, [f"→ {p}" for p in pred_a.tolist()]),
            ],
            colorscale=["gray", ATTRIBUTION, ATTRIBUTION],
            height_per_row=130,
        ),
        "attr-before-after",
        f"{current.name}-{pick.defense}-attribution",
    )
    d1, d2, _ = st.columns([2, 2, 3])
    d1.download_button(
        "Download purified model (.zip)",
        lambda: pick.bundle_zip(current),
        file_name=f"{current.name}-{pick.defense}.zip",
        mime="application/zip",
        key="w_dl_bundle",
    )
    d2.download_button(
        "Download report (JSON)",
        report_json(pick.report(current)),
        file_name=f"{current.name}-{pick.defense}-report.json",
        mime="application/json",
        key="w_dl_report",
    )


def pair_of(name: str) -> str | None:
    """The same defense with distillation switched the other way, if it is registered."""
    other = name[:-3] if name.endswith("-kd") else name + "-kd"
    return other if other in DEFENSES else None


names = {r.defense for r in finished}
missing = next((pair_of(d) for d in sorted(names) if pair_of(d) and pair_of(d) not in names), None)
nxt = classroom.next_page("pages/purify.py")
classroom.next_step(
    story.next_step("purify", runs=len(finished), missing=missing, compare=nxt is not None),
    nxt,
)
redraw.drawn("purify", ended)
