"""The offline HTML report of the current model, from the sidebar of every page.

Built only on request ("Prepare report"): it measures what is not measured yet (the pruning curve, the
ground truth if the background worker has not finished it), which takes seconds, so pages stay quick.
The prepared file is kept per model until the model or the clean subset changes; the download button
hands it over without rebuilding. Its data is the file's bytes, not a callable: Streamlit serves bytes
under an address made from their hash, which stays valid while a rerun is under way, whereas a callable
gets a new id on every rerun and a click that lands during one downloads nothing (seen under CI load).
"""

from __future__ import annotations

import streamlit as st

from defense import compare, report_html
from ui import compare_job, state
from ui.lab import Lab


def build(lab_: Lab) -> str:
    """The report of this session's model: its comparison results, Threshold choice and Purify runs."""
    subs = compare_job.subsets(lab_, int(st.session_state.get("compare_seeds", 1)))
    cfg = compare_job.settings()
    known, _ = compare.known_results(lab_.bundle, subs, cfg)
    job = compare_job.current_job(lab_)
    if job is not None and not job.active and job.comparison.config == cfg:
        known.update({k: v for k, v in job.comparison.results.items() if k[0] in {s.seed for s in subs}})
    comparison = compare.Comparison(lab_.model, subs, config=cfg, known=known)
    truth = lab_.ground_truth()
    own = [r.report(lab_) for r in st.session_state["runs"] if r.model_key == lab_.key and not r.active and r.records]
    return report_html.build_report(
        lab_.bundle,
        comparison,
        threshold=state.threshold(),
        extra_runs=own,
        scores=lab_.scores(),
        truth=truth.result() if truth.exception() is None else None,  # waits for the worker: no second ablation
    )


def sidebar_report(lab_: Lab) -> None:
    ss = st.session_state
    key = (lab_.key, lab_.fraction, lab_.seed)
    with st.sidebar:
        st.markdown("### Report")
        ready = ss.get("report_html")
        if ready is not None and ready[0] == key:
            st.download_button(
                "Download report (HTML)",
                ready[1],
                file_name=f"{lab_.name}-report.html",
                mime="text/html",
                key="w_report_download",
                icon=":material/download:",
                help="one self-contained file: opens offline in any browser",
            )
            st.button(
                "Prepare again",
                key="w_report_again",
                on_click=_prepare,
                args=(lab_, key),
                help="include what was run since",
            )
        else:
            st.button(
                "Prepare report",
                key="w_report_prepare",
                on_click=_prepare,
                args=(lab_, key),
                help="the model, its salience maps, the threshold, every run and the comparison in one HTML file "
                "(measures what is missing first: up to a minute)",
            )


def _prepare(lab_: Lab, key: tuple) -> None:
    st.session_state["report_html"] = (key, build(lab_).encode())
