"""The sidebar every page shares: the current model, its accuracy and ASR, and the defender's clean data."""

from __future__ import annotations

import streamlit as st

from ui import classroom
from ui.lab import Lab
from ui.state import synced


def sidebar(lab_: Lab) -> None:
    with st.sidebar:
        classroom.presenter_toggle()
        st.markdown("### Current model")
        ev = lab_.evaluation()
        st.markdown(f"**{lab_.name}**  \n{lab_.bundle.meta['attack']['kind']} attack → {lab_.target}")
        runs = [r for r in st.session_state.get("runs", []) if r.model_key == lab_.key]
        st.caption(
            "As loaded, before any purification"
            + (f" ({len(runs)} purified cop{'y' if len(runs) == 1 else 'ies'} on the Purify page)." if runs else ".")
        )
        c1, c2 = st.columns(2)
        c1.metric(
            "Clean accuracy", f"{ev['clean_acc']:.1%}", help="share of the 1,000 test images classified correctly"
        )
        c2.metric(
            "Attack success",
            f"{ev['asr']:.1%}",
            help="share of triggered test images (true label not the target) classified as the target",
        )
        with st.expander("Defender's clean data"):
            synced(
                st.number_input,
                "share of the training set",
                "clean_fraction",
                min_value=0.01,
                max_value=1.0,
                step=0.01,
                format="%.2f",
                help="the clean images the defender holds (5% in the paper)",
            )
            synced(st.number_input, "seed of the subset", "clean_seed", min_value=0, max_value=10_000, step=1)
            st.caption(f"{len(lab_.splits.clean)} clean images")
        classroom.confirm_button(
            "Reset for the next class",
            "w_reset",
            classroom.reset_session,
            "Stop and forget every run, and put every setting (model, threshold, defense, presenter mode) back to "
            "its default?",
            disabled=False,
        )
