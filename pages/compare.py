"""Compare page: every registered defense on the current model, side by side (leaderboard, trade-off, curves)."""

import pandas as pd
import streamlit as st

from defense import compare
from ui import compare_job, redraw, state
from ui.compare_charts import asr_curves_figure, table_rows, tradeoff_figure
from ui.lab import current_lab
from ui.theme import plot

state.require_app()
st.title("Compare every defense")
state.intro(
    "One button runs every defense the lab knows (the paper's **bs-ar**, the baselines and the rest) on the model "
    "in front of you, one after another, on the same clean images. The table ranks what each one leaves behind: "
    "the clean accuracy, the attack success rate, the accuracy it cost and how fast the attack fell. "
    "The best defenses sit bottom left in the scatter: little accuracy lost, little attack left."
)

ss = st.session_state
ss.setdefault("compare_seeds", 1)
lab = current_lab()
job = compare_job.current_job(lab)
busy = job is not None and job.active
count = int(ss["compare_seeds"])
subs = compare_job.subsets(lab, count)
cfg = compare_job.settings()
entries = compare.registered()
known, source = compare.known_results(lab.bundle, subs, cfg)
missing = [(s.seed, d.name) for s in subs for d in entries if (s.seed, d.name) not in known]

c1, c2 = st.columns([2, 3])
with c1:
    state.synced(
        st.radio,
        "Clean subsets",
        "compare_seeds",
        options=[1, 3],
        horizontal=True,
        format_func={1: "the current one", 3: "3 subsets (spread)"}.get,
        disabled=busy,
        help=f"3 subsets: seeds {lab.seed}, {lab.seed + 1} and {lab.seed + 2} of the defender's clean data, "
        "each also seeding the fine-tuning; the table shows means and the scatter the spread",
    )
with c2:
    st.caption(
        f"{len(entries)} defenses × {count} subset(s) of {len(lab.splits.clean)} clean images, "
        f"{cfg.steps} fine-tuning steps each (CLP none). Results are kept per model and clean subset: "
        "coming back here shows them at once."
    )


def run(fresh: bool) -> None:
    compare_job.start(current_lab(), int(ss["compare_seeds"]), fresh)


b1, b2, _ = st.columns([1, 1, 3])
if missing:
    b1.button(
        "Run every defense" if len(missing) == len(subs) * len(entries) else f"Run the {len(missing)} missing",
        type="primary",
        disabled=busy,
        key="w_compare_run",
        on_click=run,
        args=(False,),
    )
if len(missing) < len(subs) * len(entries):
    b2.button("Re-run all", disabled=busy, key="w_compare_rerun", on_click=run, args=(True,))
if source == "shipped" and not busy:
    st.info(
        "These results were shipped with this bundled model (computed with the same settings by "
        "`python -m defense compare`). Re-run them here to see them live on this machine.",
        icon=":material/inventory_2:",
    )
elif source == "cache" and not busy:
    st.caption("Results from an earlier comparison of this very model and clean subset.")


def ended_job(j) -> tuple | None:
    """What a full run shows the end of: this session's last comparison, once it is over."""
    return (id(j), j.status) if j is not None and not j.active else None


ended = ended_job(job)  # as this run sees it: what its end marks as drawn
poll = redraw.polling("compare", busy, ended)


def results_now() -> dict:
    """Known results, overlaid by this session's comparison (live or finished) when it has the same settings."""
    seeds = {s.seed for s in subs}
    if job is None or job.comparison.config != cfg:
        return known
    return {k: v for k, v in {**known, **job.comparison.snapshot()}.items() if k[0] in seeds}


@st.fragment(run_every=compare_job.POLL_S if poll else None)
def live() -> None:
    """Overall progress, each run's status and Stop, redrawn while the comparison runs."""
    j = compare_job.current_job(lab)
    if j is None:
        return
    if not j.active:  # finished: redraw the page (table, charts, buttons)
        redraw.ask_if_needed("compare", ended_job(j))
    c = j.comparison
    if j.active:
        left, right = st.columns([5, 1])
        now = c.current
        step, steps = c.current_step()
        what = f"{now[1]} (subset {now[0]}): step {step} of {steps}" if now else "preparing…"
        left.progress(c.progress(), text=f"{c.progress():.0%} · {what} · {j.seconds:.0f} s")
        right.button("Stop", key="w_compare_stop", on_click=j.stop, disabled=j.status == "stopping")
    rows = [
        {"defense": name, "subset": seed, "status": status}
        for (seed, name), status in c.status.items()
        if status not in ("cached", "shipped") or j.active
    ]
    with st.expander("Status of each run", expanded=j.active):
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="compare-status")
    if j.status == "error":
        st.error(f"The comparison failed: {j.error}")
    for (seed, name), r in c.results.items():
        if r.get("status") == "error":
            st.error(f"{name} (subset {seed}) failed: {r['error']}")
    if not j.active:
        st.caption(f"Last comparison: {j.status} after {j.seconds:.0f} s.")


live()

results = results_now()
board = compare.leaderboard({k: v for k, v in results.items() if v.get("after")}, entries)
if board.empty:
    st.info("No results yet for this model and clean subset: press **Run every defense**.")
    redraw.drawn("compare", ended)
    st.stop()

st.subheader("Leaderboard")
st.caption(
    "Click a column to sort. Rates in % on the 1,000 test images; with 3 subsets, means (± half the range in the "
    "± columns). Steps to ASR ≤ 5%, accuracy kept: the first evaluated step (every 10) where the attack is at "
    "most 5% while clean accuracy is within 5 points of its start (a model broken for a while early in "
    "fine-tuning also shows ASR 0%, which is no success), None if never. ★ marks the paper's method."
)
frame = pd.DataFrame(table_rows(board))


def highlight(row: pd.Series) -> list[str]:
    return ["background-color: rgba(214, 39, 40, 0.12); font-weight: 600" if "★" in row["defense"] else ""] * len(row)


pct = st.column_config.NumberColumn(format="%.1f%%")
st.dataframe(
    frame.style.apply(highlight, axis=1),
    hide_index=True,
    width="stretch",
    key="compare-table",
    column_config={
        "defense": st.column_config.TextColumn(width="medium"),
        "clean accuracy after": pct,
        "ASR after": pct,
        "accuracy lost (points)": st.column_config.NumberColumn(format="%.1f"),
        "± ASR": st.column_config.NumberColumn(format="%.1f"),
        "± accuracy lost": st.column_config.NumberColumn(format="%.1f"),
        "steps to ASR ≤ 5%, accuracy kept": st.column_config.NumberColumn(format="%.0f"),
        "seconds": st.column_config.NumberColumn(format="%.1f"),
    },
)
# one above the other: side by side at 1280 px each plot was a strip above a legend as tall as itself
plot(tradeoff_figure(board), "compare-scatter", f"{lab.name}-defenses-tradeoff")
st.caption(
    "One point per defense (error bars: half the range over the clean subsets); the dotted staircase is the "
    "Pareto front, the defenses no other one beats on both counts."
)
plot(asr_curves_figure(results, [d.name for d in entries]), "compare-curves", f"{lab.name}-defenses-asr")
st.caption("The attack success rate during each run.")
redraw.drawn("compare", ended)
