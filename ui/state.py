"""Session state: the choices several pages share, widgets bound to them, and running a page inside app.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import streamlit as st

from defense import data, purify
from defense.registry import SCORES

DEFAULT_MODEL = "mnist-badnets"


def curve_scores() -> list[str]:
    """The registered scores the Threshold page offers and its pruning curve draws (``Score.curve``)."""
    return [s.name for s in SCORES if s.curve]


def init_state() -> None:
    """Choices several pages use, under non-widget keys so they survive page switches."""
    defaults = purify.PurifyConfig()
    for key, value in {
        "model": DEFAULT_MODEL,  # a bundled model's name, or an upload's key
        "uploads": {},  # key -> Bundle, this session's uploaded models
        "clean_fraction": data.CLEAN_FRACTION,
        "clean_seed": 0,
        "threshold_metric": defaults.metric if defaults.metric in curve_scores() else "benign",
        "threshold_mode": "ratio",  # 'ratio': share of neurons marked; 'value': normalized-score cut
        "threshold_value": defaults.ratio,
        "threshold_scope": defaults.scope,
        "runs": [],  # ui.runs.Runner objects of this session
        "last_seen": time.monotonic(),
    }.items():
        st.session_state.setdefault(key, value)
    st.session_state["last_seen"] = time.monotonic()
    from ui import jobs  # the heartbeat of this session's background jobs (where the runtime cannot tell)

    jobs.board().seen(jobs.session_id())
    for run in st.session_state["runs"]:
        run.seen()


def threshold() -> tuple[str, str, float, str]:
    """The Threshold page's choice: (score, mode, value, scope)."""
    ss = st.session_state
    return ss["threshold_metric"], ss["threshold_mode"], ss["threshold_value"], ss["threshold_scope"]


def require_app() -> None:
    """Make sure app.py (config, state, sidebar, navigation) runs around this page; call it first in every page."""
    # Streamlit 1.67 has no supported switch for this (client.showSidebarNavigation only hides the menu): with
    # a folder named pages/ beside app.py, a fresh process, and every AppTest run, starts in the legacy
    # multipage mode, which runs a deep-linked page alone, until st.navigation runs. Leave that mode as
    # st.navigation itself does, and rerun through app.py.
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def synced(widget: Callable[..., Any], label: str, state_key: str, **kwargs: Any) -> Any:
    """``widget`` whose value lives in ``st.session_state[state_key]``, so it survives page switches.

    Streamlit forgets a widget's own key when its page is left; the non-widget key keeps it.
    """
    wkey = f"w_{state_key}"
    st.session_state[wkey] = st.session_state[state_key]

    def save() -> None:
        st.session_state[state_key] = st.session_state[wkey]

    return widget(label, key=wkey, on_change=save, **kwargs)


def intro(text: str) -> None:
    """The plain sentences a page opens with."""
    st.markdown(text)


def in_words(n: int) -> str:
    """A small count as a word ("three scores"), larger ones as digits."""
    words = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    return words[n] if 0 <= n < len(words) else str(n)


def points(delta: float) -> str:
    """A change of a rate, in percentage points."""
    return f"{100 * delta:+.1f} points"
