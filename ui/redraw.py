"""When background work ends, a page's live fragment asks for a full redraw, until one has got to the end.

The Purify and Compare pages draw progress in a fragment that polls while work runs; the results are drawn
by the full page, so the fragment asks for a full rerun when the work ends. Under load a full run could be
cut short after the fragment and before the results, with the fragment already told to stop polling: the
page then stayed without its results (seen in bench/app_load.py, one session of eight). So the page marks
what it has drawn at its *end* (``drawn``), the fragment keeps polling until that mark matches the work that
has ended, asking for full reruns meanwhile, and one more full run then switches the polling off.

Usage, with ``ended`` any value that names the finished work (e.g. the labels of the finished runs)::

    poll = redraw.polling("purify", busy, ended)        # in the full run, before the fragment
    @st.fragment(run_every=POLL_S if poll else None)
    def live():
        if not active:
            redraw.ask_if_needed("purify", ended_now)
        ...
    redraw.drawn("purify", ended)                        # the page's last line (and before any st.stop)
"""

from __future__ import annotations

from collections.abc import Hashable

import streamlit as st


def _keys(name: str) -> tuple[str, str]:
    return f"_{name}_drawn", f"_{name}_polling"


def polling(name: str, busy: bool, ended: Hashable) -> bool:
    """Whether the live fragment polls in this full run: while work runs, and until a full run has drawn
    ``ended`` to the end of the page. On a first visit there is nothing new to draw."""
    drawn_key, polling_key = _keys(name)
    ss = st.session_state
    ss.setdefault(drawn_key, ended)
    poll = busy or ss[drawn_key] != ended
    ss[polling_key] = poll
    return poll


def in_fragment_run() -> bool:
    """True in a run of a fragment alone (its polling), False when the fragment is drawn by a full run."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return bool(ctx is not None and ctx.fragment_ids_this_run)


def ask_if_needed(name: str, ended: Hashable) -> None:
    """From the fragment, once the work is over: a full rerun if no full run has drawn ``ended`` yet, or if
    the last full run left the fragment polling. Never from a full run's own drawing of the fragment, which
    would restart the run it is part of."""
    drawn_key, polling_key = _keys(name)
    ss = st.session_state
    if in_fragment_run() and (ss.get(drawn_key) != ended or ss.get(polling_key, False)):
        st.rerun()


def drawn(name: str, ended: Hashable) -> None:
    """At the end of the page's full run: ``ended`` is on the page."""
    st.session_state[_keys(name)[0]] = ended
