"""Purification runs: one thread each, owned by the session that started it.

- Each run is a ``Runner``: one ``threading.Thread`` per run, kept in ``st.session_state["runs"]``. The thread
  never calls ``st.*``; the Purify page polls it with ``st.fragment(run_every=POLL_S)``.
- A session that goes away stops its threads. Choice: the thread asks Streamlit's runtime whether its session
  is still active (``runtime.get_instance().is_active_session``, which a closed tab leaves at once) and stops
  itself after ``ABSENT_S`` of absence (a brief reconnect keeps it alive). Without a runtime (``AppTest``,
  plain scripts) it falls back to a heartbeat: every page render marks the session seen, and the run stops if
  it is not seen for ``ABSENT_S``. A heartbeat alone would stop a run while the user sits on another page.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import numpy as np
import streamlit as st

from defense import baselines, purify
from defense import bundle as bundle_io
from defense.neurons import NeuronScores
from defense.registry import DEFENSES, SCORES
from defense.results import purified_bundle, run_report
from defense.runtime import configure_threads, release_memory
from ui import palette
from ui.lab import Lab

EVAL_EVERY = 10  # steps between clean-accuracy/ASR points of a live run
POLL_S = 0.4  # the Purify page redraws a live run this often
ABSENT_S = 10.0  # a run stops once its session has been gone this long
log = logging.getLogger(__name__)


@dataclass
class Runner:
    """One purification running in its own thread; the thread never calls st.*.

    ``records`` grows as the run goes (list.append is atomic); ``status`` is 'starting',
    'running', 'stopping', 'stopped', 'done', 'abandoned' or 'error'.
    """

    label: str
    defense: str
    model_key: str
    steps: int
    # called in the thread (FP measures its mask there); None when Stop came while it waited for a score
    build: Callable[[], purify.Purification | None]
    session_id: str | None = None
    color: str = palette.RUNS[0]
    settings: str = ""  # what it was run with: score, marked share, λ, lr, steps, distillation
    records: list[dict] = field(default_factory=list)
    status: str = "starting"
    error: str | None = None
    run: purify.Purification | None = None
    last_seen: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.perf_counter)
    attr_after: np.ndarray | None = None  # the purified model's attribution, computed once by the page
    _gone_since: float | None = None
    _stop: bool = False

    @property
    def full_label(self) -> str:
        """The label with the settings, so that two runs of one defense can be told apart."""
        return f"{self.label} · {self.settings}" if self.settings else self.label

    def start(self) -> Runner:
        self.thread = threading.Thread(target=self._main, name=f"bnl-purify-{self.label}", daemon=True)
        self.thread.start()
        return self

    def _main(self) -> None:
        configure_threads(share_with_server=True)  # per thread in torch: a new thread would take every core
        try:
            self.run = self.build()
            if self._stop:
                self.status = "stopped"
                return
            self.status = "running"
            for record in self.run:
                self.records.append(dict(record))
                if self._stop:
                    self.run.stop()
                elif not self._session_alive():
                    self.run.stop()
                    self.status = "abandoned"
            if self.status == "abandoned":  # one line in the server's log, so it can be seen from outside
                log.warning("bnl: run '%s' stopped: its session went away", self.label)
            else:
                self.status = "stopped" if self._stop else "done"
        except Exception as err:  # noqa: BLE001 - shown on the page; the thread must not die silently
            self.error = " ".join(str(err).split()) or type(err).__name__
            self.status = "error"
        finally:
            release_memory()  # what the training freed goes back to the system, not to this thread's arena

    def _session_alive(self) -> bool:
        now = time.monotonic()
        from streamlit import runtime

        if runtime.exists() and self.session_id is not None:
            if runtime.get_instance().is_active_session(self.session_id):
                self._gone_since = None
                return True
            self._gone_since = self._gone_since or now
            return now - self._gone_since < ABSENT_S
        return now - self.last_seen < ABSENT_S

    def seen(self) -> None:
        self.last_seen = time.monotonic()

    @property
    def stopping(self) -> bool:
        """Stop was asked for."""
        return self._stop

    def stop(self) -> None:
        self._stop = True
        if self.status in ("starting", "running"):
            self.status = "stopping"
        if self.run is not None:
            self.run.stop()

    @property
    def active(self) -> bool:
        return self.status in ("starting", "running", "stopping")

    @property
    def step(self) -> int:
        return self.records[-1]["step"] if self.records else 0

    @property
    def seconds(self) -> float:
        return self.records[-1]["seconds"] if self.records else 0.0

    def evaluations(self) -> list[dict]:
        return [r for r in list(self.records) if "asr" in r]

    def before_after(self) -> tuple[dict | None, dict | None]:
        ev = self.evaluations()
        return (ev[0], ev[-1]) if ev else (None, None)

    def report(self, lab_: Lab) -> dict:
        context = {
            "model": lab_.name,
            "model_key": self.model_key,
            "defense": self.defense,
            "description": DEFENSES[self.defense].label,
            "settings": self.settings,
            "status": self.status,
        }
        return run_report(list(self.records), self.run.config if self.run else None, context=context, history=True)

    def bundle_zip(self, lab_: Lab) -> bytes:
        _, after = self.before_after()
        name = f"{lab_.name}-{self.defense}"
        purified = purified_bundle(
            lab_.bundle, self.run.model, name=name, after=after, config=self.run.config, defense=self.defense
        )
        return bundle_io.bundle_bytes(purified, name)


def marking_for(defense: str) -> tuple[str, float, str]:
    """(mode, value, scope) of the Threshold page's marking as it applies to ``defense``.

    A share of neurons means the same under any score; a score cut does not (0.35 of benign salience's
    normalized range is not 0.35 of another score's), so a cut is used only by a defense that marks with the
    score it was set on, and any other marks its own default share."""
    ss = st.session_state
    marking = DEFENSES[defense].marking
    if ss["threshold_mode"] == "value" and marking is not None and marking[0] != ss["threshold_metric"]:
        defaults = purify.PurifyConfig()
        return "ratio", defaults.ratio, defaults.scope
    return ss["threshold_mode"], float(ss["threshold_value"]), ss["threshold_scope"]


def purification_config(steps: int, lr: float, lam: float) -> purify.PurifyConfig:
    """The recommended settings with the page's steps, learning rate, λ and the Threshold page's marking."""
    ss = st.session_state
    cfg = replace(purify.PurifyConfig(), steps=int(steps), lr=float(lr), lam=float(lam), eval_every=EVAL_EVERY)
    if ss["threshold_mode"] == "ratio":
        cfg = replace(cfg, ratio=float(ss["threshold_value"]), scope=ss["threshold_scope"])
    return cfg.validate()


def run_settings(defense: str, cfg: purify.PurifyConfig, mode: str, value: float, scope: str) -> str:
    """A run's settings in a few words: score and marked share, λ, learning rate, steps, distillation."""
    d = DEFENSES[defense]
    parts = []
    if d.marking is not None:
        score, reg = d.marking
        if mode == "ratio":  # a defense with a share of its own uses it while the Threshold page is at the default
            value = baselines.settings_for(defense, replace(cfg, ratio=value)).ratio
        marked = (
            f"{value:.0%} marked" + (" overall" if scope == "global" else "")
            if mode == "ratio"
            else f"cut ≤ {value:.2f}"
        )
        parts.append(f"{SCORES[score].label if score in SCORES else score} {marked}")
        if reg in ("ar", "l1", "l2"):
            parts.append(f"λ {cfg.lam:g}")
    elif defense.startswith("fp"):
        parts.append("FP pruning")
    if defense != "clp":  # CLP prunes from the weights alone: no fine-tuning
        parts += [f"lr {cfg.lr:g}", f"{cfg.steps} steps", "distillation" if d.distill else "no distillation"]
    else:
        parts.append("no fine-tuning")
    return ", ".join(parts)


def wait_for_score(pending: Future, runner: Runner) -> NeuronScores | None:
    """The background job's score once it is done; None if Stop came first or the job failed (the run then
    measures the score itself)."""
    while not pending.done() and not runner.stopping:
        time.sleep(POLL_S / 2)
    if runner.stopping or pending.exception() is not None:
        return None
    return pending.result()


def start_run(lab_: Lab, defense: str, cfg: purify.PurifyConfig) -> Runner:
    """A new run of ``defense`` on a private copy of this session's model, started in its own thread."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ss = st.session_state
    model = copy.deepcopy(lab_.model)  # taken here, in the page's thread: no hooks of a preview can be in flight
    scores = lab_.scores()
    clean, test, trig = lab_.splits.clean, lab_.splits.test, lab_.triggered
    marking = DEFENSES[defense].marking  # (score, regularizer) of a defense that can take the Threshold page's mask
    mask = None
    mode, value, scope = marking_for(defense)
    if marking is not None and mode == "value":  # a share is passed in cfg (ratio, scope)
        mask = lab_.mask(marking[0], "value", value, scope)

    pending = None
    if marking and marking[0] not in scores and SCORES[marking[0]].cost == "slow":
        # queued in the background by the pages already: asked for now, so the run waits for it, not measures it twice
        pending = lab_.slow_score(marking[0], low=False)

    def build() -> purify.Purification | None:
        marked_by = scores.get(marking[0]) if marking else None
        if pending is not None:
            marked_by = wait_for_score(pending, runner)
            if runner.stopping:
                return None
        return baselines.make(defense, model, clean, test, trig, cfg, scores=marked_by, mask=mask)

    runs = ss["runs"]
    ctx = get_script_run_ctx()
    number = 1 + sum(r.model_key == lab_.key for r in runs)
    runner = Runner(
        f"{number}. {defense}",
        defense,
        lab_.key,
        cfg.steps if defense != "clp" else 0,
        build,
        session_id=ctx.session_id if ctx else None,
        color=palette.run_color(number),
        settings=run_settings(defense, cfg, mode, value, scope),
    )
    runs.append(runner)
    return runner.start()


def runs_table(runs: list[Runner]) -> list[dict]:
    """One row per run: status, steps, time, and clean accuracy and ASR (in %) before and now."""

    def pct(rec: dict | None, k: str) -> float | None:
        return round(100 * rec[k], 1) if rec else None

    rows = []
    for r in runs:
        before, after = r.before_after()
        rows.append(
            {
                "run": r.label,
                "settings": r.settings,
                "status": r.status,
                "steps": r.step,
                "seconds": round(r.seconds, 1),
                "accuracy before": pct(before, "clean_acc"),
                "accuracy now": pct(after, "clean_acc"),
                "attack success before": pct(before, "asr"),
                "attack success now": pct(after, "asr"),
            }
        )
    return rows


def report_json(report: dict) -> str:
    return json.dumps(report, indent=2)
