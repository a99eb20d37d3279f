"""The Compare page's background work: every defense on the current model, in one thread per session.

The thread never calls ``st.*``; the page polls it with ``st.fragment(run_every=POLL_S)``. Like a Purify run,
it stops by itself once its session has been gone ``ui.runs.ABSENT_S`` (the same presence check). Each
finished run is written to the results cache at once, so a stopped comparison keeps what it finished.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, field

import streamlit as st

from defense import compare, result_store
from defense.purify import PurifyConfig
from defense.runtime import configure_threads, release_memory
from ui import runs
from ui.lab import Lab, splits_for

POLL_S = 1.0
log = logging.getLogger(__name__)


def subsets(lab_: Lab, count: int) -> list[compare.Subset]:
    """The current clean subset, and the next ``count - 1`` seeds' subsets (same fraction, same test split)."""
    out = [compare.Subset(lab_.seed, lab_.fraction, lab_.splits.clean, lab_.splits.test, lab_.triggered)]
    for seed in range(lab_.seed + 1, lab_.seed + count):
        clean = splits_for(lab_.bundle.meta, lab_.fraction, seed).clean
        out.append(compare.Subset(seed, lab_.fraction, clean, lab_.splits.test, lab_.triggered))
    return out


def settings() -> PurifyConfig:
    """The comparison's base settings: the recommended ones, with the page's steps (``compare_steps``)."""
    from dataclasses import replace

    cfg = compare.base_settings()
    steps = st.session_state.get("compare_steps")
    if steps and int(steps) != cfg.steps:
        cfg = replace(cfg, steps=int(steps), eval_every=min(cfg.eval_every, int(steps)))
    return cfg.validate()


def fingerprint(lab_: Lab) -> str:
    """The model's fingerprint, computed once per session and model."""
    cache = st.session_state.setdefault("_fingerprints", {})
    if lab_.key not in cache:
        cache[lab_.key] = result_store.fingerprint(lab_.bundle)
    return cache[lab_.key]


@dataclass
class CompareJob:
    """A Comparison running in its own thread; ``status``: running, stopping, stopped, done, abandoned, error."""

    model_key: str
    bundle: object  # the shared Bundle (read only: the comparison copies the model for every run)
    comparison: compare.Comparison
    session_id: str | None = None
    status: str = "running"
    error: str | None = None
    last_seen: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    _gone_since: float | None = None

    _session_alive = runs.Runner._session_alive  # the same presence check as a Purify run
    seen = runs.Runner.seen

    def start(self) -> CompareJob:
        self.thread = threading.Thread(target=self._main, name="bnl-compare", daemon=True)
        self.thread.start()
        return self

    def _main(self) -> None:
        configure_threads(share_with_server=True)  # per thread in torch
        try:
            for event in self.comparison:
                if event["event"] == "end":
                    compare.save_results(self.bundle, self.comparison)
                if not self.comparison.stopped and not self._session_alive():
                    self.comparison.stop()
                    self.status = "abandoned"
            if self.status == "abandoned":
                log.warning("bnl: comparison stopped: its session went away")
            else:
                self.status = "stopped" if self.comparison.stopped else "done"
        except Exception as err:  # noqa: BLE001 - shown on the page; the thread must not die silently
            self.error = " ".join(str(err).split()) or type(err).__name__
            self.status = "error"
        self.ended = time.perf_counter()
        release_memory()

    def stop(self) -> None:
        if self.active:
            self.status = "stopping"
        self.comparison.stop()

    @property
    def active(self) -> bool:
        return self.status in ("running", "stopping")

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started


def start(lab_: Lab, count: int, fresh: bool) -> CompareJob:
    """Start every defense on this session's model over ``count`` clean subsets; ``fresh``: ignore known results."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    subs = subsets(lab_, count)
    cfg = settings()
    known = {} if fresh else compare.known_results(lab_.bundle, subs, cfg)[0]
    # copied here, in the page's thread: no hooks of a preview can be in flight
    comparison = compare.Comparison(copy.deepcopy(lab_.model), subs, config=cfg, known=known)
    ctx = get_script_run_ctx()
    job = CompareJob(lab_.key, lab_.bundle, comparison, session_id=ctx.session_id if ctx else None)
    st.session_state["compare_job"] = job
    return job.start()


def current_job(lab_: Lab) -> CompareJob | None:
    job = st.session_state.get("compare_job")
    if job is not None and job.model_key == lab_.key:
        job.seen()
        return job
    return None
