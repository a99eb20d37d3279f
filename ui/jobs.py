"""The background worker: slow, one-off measurements run here so that no page waits on them.

One worker thread for the whole server (measurements are CPU-bound; two at once would only slow both).
Each job is known by a key and runs once; every session asking for the same key shares its future.
A page that needs a result shows a note and polls until it is ready (``wait_note``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import streamlit as st


@st.cache_resource(show_spinner=False)
def _jobs() -> tuple[ThreadPoolExecutor, dict[tuple, Future], threading.Lock]:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnl-measure"), {}, threading.Lock()


def background(key: tuple, fn: Callable[..., Any], *args: Any) -> Future:
    """The (shared, cached) future of ``fn(*args)`` run once in the background worker; ``fn`` never calls st.*."""
    pool, futures, lock = _jobs()
    with lock:
        if key not in futures:
            futures[key] = pool.submit(fn, *args)
        return futures[key]


def wait_note(futures: list[Future], message: str) -> bool:
    """True when all are done; else a note, and the page reruns by itself once they are."""
    if all(f.done() for f in futures):
        return True
    st.info(message, icon=":material/hourglass_top:")

    @st.fragment(run_every=1.0)
    def _poll() -> None:
        if all(f.done() for f in futures):
            st.rerun()

    _poll()
    return False
