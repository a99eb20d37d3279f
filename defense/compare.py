"""Every registered defense on one model, side by side: the data behind the Compare page and the report.

``Comparison`` runs each defense of ``defense.registry.DEFENSES`` (whatever is registered when it
is built) in turn on the same model and the same clean subset(s), cooperatively: iterate it to
run (each step of each run yields a small progress event), call ``stop()`` from any thread to
end after the current step. Runs already known (cached or shipped) are not run again.

Per run it keeps: clean accuracy and ASR before and after, accuracy lost, steps to ASR ≤ 5% (with accuracy kept),
seconds, the evaluated curve (history) and a status ('pending', 'running', 'done', 'stopped',
'error', or 'cached' / 'shipped' when it came from disk). ``leaderboard`` sums the runs up per
defense (mean and half-range over seeds), ``pareto`` marks the defenses no other beats on both
ASR and accuracy lost.
"""

from __future__ import annotations

import copy
import math
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pandas as pd

from . import result_store
from .data import TensorData
from .purify import PurifyConfig

ASR_GOAL = 0.05
ACC_SLACK = 0.05  # the Compare page's steps count only once clean accuracy is within 5 points of its start
EVAL_EVERY = 10  # steps between the evaluated points of a run's curve


@dataclass(frozen=True)
class Subset:
    """One defender clean subset and the test sets every defense is judged on."""

    seed: int
    fraction: float
    clean: TensorData
    test: TensorData
    triggered: TensorData


@dataclass(frozen=True)
class Entry:
    """What the comparison needs of a defense (read from the registry)."""

    name: str
    label: str
    build: Callable
    paper: bool = False
    recommended: bool = False


def registered() -> list[Entry]:
    """The defenses registered now, in registration order."""
    from .registry import DEFENSES

    entries = [Entry(d.name, d.label, d.build, d.paper, d.recommended) for d in DEFENSES]
    if not any(e.paper for e in entries):  # no entry flagged as the paper's own: bs-ar is its method (BS + AR)
        entries = [replace(e, paper=True) if e.name == "bs-ar" else e for e in entries]
    return entries


def steps_to_goal(history: list[dict], goal: float = ASR_GOAL, acc_slack: float | None = None) -> float:
    """First evaluated step at which ASR ≤ goal (NaN if never).

    With ``acc_slack``, clean accuracy must also be within that much of the first evaluation's: early in
    fine-tuning a model can be broken for a while (10% accuracy, and ASR 0% with it), which is no success.
    """
    if not history:
        return float("nan")
    floor = history[0]["clean_acc"] - acc_slack if acc_slack is not None else -math.inf
    return next(
        (h["step"] for h in history if h.get("asr") is not None and h["asr"] <= goal and h["clean_acc"] >= floor),
        float("nan"),
    )


def subsets_for(bundle, seeds: list[int], fraction: float, data_root=None) -> list[Subset]:
    """The clean subsets of ``seeds`` (the test split is the same for all)."""
    from .data import load_splits_for
    from .metrics import triggered_set

    out, triggered = [], None
    for seed in seeds:
        splits = load_splits_for(bundle.meta, data_root, seed=seed, clean_fraction=fraction)
        triggered = triggered if triggered is not None else triggered_set(splits.test, bundle.trigger, bundle.target)
        out.append(Subset(seed, fraction, splits.clean, splits.test, triggered))
    return out


def base_settings(config: PurifyConfig | None = None) -> PurifyConfig:
    """The settings every defense starts from: the recommended ones, the curve evaluated every EVAL_EVERY steps."""
    return config if config is not None else replace(PurifyConfig(), eval_every=EVAL_EVERY)


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def summarize_run(entry: Entry, seed: int, records: list[dict], config, status: str, error: str | None) -> dict:
    """One run's result as plain JSON-able data."""
    evals = [r for r in records if "asr" in r]
    first, last = (evals[0], evals[-1]) if evals else (None, None)

    def pick(r):
        return {"clean_acc": r["clean_acc"], "asr": r["asr"]} if r else None

    reached = steps_to_goal(evals, acc_slack=ACC_SLACK)
    return {
        "defense": entry.name,
        "label": entry.label,
        "seed": seed,
        "status": status,
        "error": error,
        "before": pick(first),
        "after": pick(last),
        "acc_lost": (first["clean_acc"] - last["clean_acc"]) if evals else None,
        "steps": records[-1]["step"] if records else 0,
        "steps_to_goal": None if math.isnan(reached) else reached,
        "seconds": round(records[-1]["seconds"], 2) if records else 0.0,
        "history": [
            {"step": r["step"], "clean_acc": r["clean_acc"], "asr": r["asr"], "seconds": round(r["seconds"], 3)}
            for r in evals
        ],
        "loss": [[r["step"], _clean(round(r["task_loss"], 5))] for r in records if "task_loss" in r and r["step"]],
        "config": config.to_dict() if hasattr(config, "to_dict") else None,
    }


class Comparison:
    """Every defense on ``model`` over ``subsets``; iterate to run, ``stop()`` to end early.

    ``known``: results already at hand, {(seed, defense name): result}, kept and not run again.
    ``results`` maps (seed, name) to each run's result (a live one is summarized on demand by ``snapshot``).
    """

    def __init__(
        self,
        model,
        subsets: list[Subset],
        defenses: list[Entry] | None = None,
        config: PurifyConfig | None = None,
        known: dict[tuple[int, str], dict] | None = None,
    ):
        self.model = model
        self.subsets = subsets
        self.defenses = defenses if defenses is not None else registered()
        self.config = base_settings(config)
        self.results: dict[tuple[int, str], dict] = {}
        self.status: dict[tuple[int, str], str] = {}
        for s in subsets:
            for d in self.defenses:
                hit = (known or {}).get((s.seed, d.name))
                if hit is not None and hit.get("status") in ("done", "cached", "shipped"):
                    self.results[(s.seed, d.name)] = hit
                    self.status[(s.seed, d.name)] = hit.get("source") or "cached"
                else:
                    self.status[(s.seed, d.name)] = "pending"
        self.current: tuple[int, str] | None = None
        self._records: list[dict] = []
        self._run = None
        self._stop = False
        self.finished = False

    # -------------------------------------------------------- progress, from any thread

    @property
    def todo(self) -> list[tuple[int, str]]:
        return [k for k, v in self.status.items() if v in ("pending", "running")]

    def progress(self) -> float:
        """Share of the runs to do that are done, the current one counted by its steps."""
        total = sum(1 for v in self.status.values() if v not in ("cached", "shipped"))
        if total == 0:
            return 1.0
        done = sum(1 for v in self.status.values() if v in ("done", "stopped", "error"))
        part = 0.0
        run, records = self._run, self._records
        if self.current is not None and run is not None and records:
            steps = max(getattr(getattr(run, "config", None), "steps", 0) or 0, 1)
            part = min(records[-1]["step"] / steps, 1.0)
        return min((done + part) / total, 1.0)

    def current_step(self) -> tuple[int, int]:
        run, records = self._run, self._records
        steps = getattr(getattr(run, "config", None), "steps", 0) or 0
        return (records[-1]["step"] if records else 0), steps

    def stop(self) -> None:
        self._stop = True
        if self._run is not None:
            self._run.stop()

    @property
    def stopped(self) -> bool:
        return self._stop

    # -------------------------------------------------------- running

    def __iter__(self) -> Iterator[dict]:
        entries = {d.name: d for d in self.defenses}
        for s in self.subsets:
            for d in self.defenses:
                key = (s.seed, d.name)
                if self.status[key] != "pending":
                    continue
                if self._stop:
                    break
                yield from self._one(s, entries[d.name])
        for key, v in self.status.items():
            if v == "pending":
                self.status[key] = "not run"
        self.finished = True

    def _one(self, s: Subset, entry: Entry) -> Iterator[dict]:
        key = (s.seed, entry.name)
        self.current, self._records, self._run = key, [], None
        self.status[key] = "running"
        config, error, status = replace(self.config, seed=s.seed), None, "done"
        yield {"event": "start", "seed": s.seed, "defense": entry.name}
        try:
            self._run = entry.build(copy.deepcopy(self.model), s.clean, s.test, s.triggered, config, None)
            config = getattr(self._run, "config", config)
            if self._stop:
                self._run.stop()
            for record in self._run:
                self._records.append(dict(record))
                yield {"event": "step", "seed": s.seed, "defense": entry.name, "step": record["step"]}
                if self._stop:
                    self._run.stop()
            if self._stop:
                status = "stopped"
        except Exception as err:  # noqa: BLE001 - one failing defense must not end the comparison
            status = "error"
            error = " ".join(str(err).split()) or type(err).__name__
            error += f" ({traceback.extract_tb(err.__traceback__)[-1].name})" if err.__traceback__ else ""
        if status == "done" and not any("asr" in r for r in self._records):
            status, error = "error", "the run ended without an evaluation"
        self.results[key] = summarize_run(entry, s.seed, self._records, config, status, error)
        self.status[key] = status
        self.current, self._run = None, None
        yield {"event": "end", "seed": s.seed, "defense": entry.name, "status": status}

    def run(self, on_event: Callable[[dict], None] | None = None) -> dict[tuple[int, str], dict]:
        for event in self:
            if on_event is not None:
                on_event(event)
        return self.results

    def snapshot(self) -> dict[tuple[int, str], dict]:
        """The results so far, the live run included (summarized from its records)."""
        out = dict(self.results)
        key, records, run = self.current, list(self._records), self._run
        if key is not None and records:
            entry = next(d for d in self.defenses if d.name == key[1])
            out[key] = summarize_run(entry, key[0], records, getattr(run, "config", None), "running", None)
        return out

    def finished_runs(self, seed: int) -> dict[str, dict]:
        """This seed's runs that ran to the end here (what is worth caching)."""
        return {n: r for (s, n), r in self.results.items() if s == seed and self.status[(s, n)] == "done"}


# ---------------------------------------------------------------- caching


def known_results(
    bundle, subsets: list[Subset], config: PurifyConfig | None = None
) -> tuple[dict[tuple[int, str], dict], str]:
    """Cached or shipped results for these subsets: ({(seed, name): result}, source of the first subset)."""
    fp = result_store.fingerprint(bundle)
    base = base_settings(config)
    settings = base.to_dict()
    known, first = {}, ""
    for i, s in enumerate(subsets):
        runs, source = result_store.lookup(fp, bundle.name, s.fraction, s.seed, settings)
        known.update({(s.seed, name): r for name, r in runs.items() if runs_as_now(name, r, base)})
        first = source if i == 0 else first
    return known, first


def runs_as_now(name: str, run: dict, base: PurifyConfig) -> bool:
    """Whether a saved run used the settings defense ``name`` brings of its own today (its registry ``defaults``).

    The results key holds the base settings only; a defense whose own defaults changed since (e.g. the share
    nc-ar marks) would otherwise be answered with a run made under the old ones.
    """
    from .baselines import settings_for
    from .registry import DEFENSES

    recorded = run.get("config")
    if name not in DEFENSES or not isinstance(recorded, dict):
        return True
    own = settings_for(name, base)
    return all(recorded.get(k, getattr(PurifyConfig(), k)) == getattr(own, k) for k in DEFENSES[name].defaults)


def save_results(bundle, comparison: Comparison, path=None) -> None:
    """Cache the runs that finished (and write them to ``path`` too, e.g. the shipped results file)."""
    fp = result_store.fingerprint(bundle)
    settings = comparison.config.to_dict()
    env = result_store.environment()
    for s in comparison.subsets:
        runs = comparison.finished_runs(s.seed)
        if runs:
            result_store.save_to_cache(fp, bundle.name, s.fraction, s.seed, settings, runs)
    if path is not None:
        data = result_store.read(path)
        if data is None or data.get("fingerprint") != fp:
            data = result_store.empty(fp, bundle.name)
        for s in comparison.subsets:
            runs = {
                n: {k: v for k, v in r.items() if k != "source"}
                for (seed, n), r in comparison.results.items()
                if seed == s.seed and r.get("status") in ("done", "cached", "shipped")
            }
            result_store.add_runs(data, s.fraction, s.seed, settings, runs, env)
        result_store.write(data, path)


# ---------------------------------------------------------------- summaries


def _spread(values: pd.Series) -> float:
    v = values.dropna()
    return float((v.max() - v.min()) / 2) if len(v) > 1 else 0.0


def _steps_kept(run: dict) -> float:
    """A run's steps to ASR ≤ 5% with accuracy kept, from its curve (results saved before ``ACC_SLACK`` counted
    ASR alone)."""
    if run.get("history"):
        return steps_to_goal(run["history"], acc_slack=ACC_SLACK)
    return run["steps_to_goal"] if run.get("steps_to_goal") is not None else math.nan


def leaderboard(results: dict[tuple[int, str], dict], defenses: list[Entry] | None = None) -> pd.DataFrame:
    """One row per defense: means over seeds (and half-range spreads), in registry order.

    Columns: defense, label, paper, recommended, seeds, clean_acc, asr, acc_lost, steps_to_goal
    (mean over the seeds that reached ASR ≤ 5% with accuracy within ``ACC_SLACK`` of its start; reached = how
    many did), seconds, status, and
    ``*_spread`` for the rates; ``pareto``: no other defense has both lower ASR and lower accuracy lost.
    """
    defenses = defenses if defenses is not None else registered()
    order = {d.name: i for i, d in enumerate(defenses)}
    flags = {d.name: d for d in defenses}
    rows = []
    for r in results.values():
        if r.get("after") is None:
            continue
        rows.append(
            {
                "defense": r["defense"],
                "seed": r["seed"],
                "clean_acc": r["after"]["clean_acc"],
                "asr": r["after"]["asr"],
                "acc_lost": r["acc_lost"],
                "steps_to_goal": _steps_kept(r),
                "seconds": r["seconds"],
                "status": r["status"],
                "label": r.get("label", r["defense"]),
            }
        )
    columns = [
        "defense", "label", "paper", "recommended", "seeds", "clean_acc", "clean_acc_spread", "asr", "asr_spread",
        "acc_lost", "acc_lost_spread", "steps_to_goal", "reached", "seconds", "status", "pareto",
    ]  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    out = []
    for name, g in frame.groupby("defense", sort=False):
        entry = flags.get(name)
        statuses = sorted(set(g.status))
        out.append(
            {
                "defense": name,
                "label": entry.label if entry else g.label.iloc[0],
                "paper": bool(entry and entry.paper),
                "recommended": bool(entry and entry.recommended),
                "seeds": len(g),
                "clean_acc": g.clean_acc.mean(),
                "clean_acc_spread": _spread(g.clean_acc),
                "asr": g.asr.mean(),
                "asr_spread": _spread(g.asr),
                "acc_lost": g.acc_lost.mean(),
                "acc_lost_spread": _spread(g.acc_lost),
                "steps_to_goal": g.steps_to_goal.mean() if g.steps_to_goal.notna().any() else math.nan,
                "reached": int(g.steps_to_goal.notna().sum()),
                "seconds": g.seconds.mean(),
                "status": ", ".join(statuses),
            }
        )
    board = pd.DataFrame(out)
    board["pareto"] = pareto(board.asr.tolist(), board.acc_lost.tolist())
    board["_order"] = board.defense.map(lambda n: order.get(n, len(order)))
    return board.sort_values("_order").drop(columns="_order").reset_index(drop=True)[columns]


def pareto(asr: list[float], lost: list[float]) -> list[bool]:
    """True for points no other point beats on both (lower is better; equal on both is not beaten)."""
    pts = list(zip(asr, lost))
    return [not any((b[0] <= a[0] and b[1] <= a[1]) and (b[0] < a[0] or b[1] < a[1]) for b in pts) for a in pts]


def time_left(comparison: Comparison, started: float) -> float | None:
    """A rough estimate of the seconds left, from the pace so far (None before the first step)."""
    done = comparison.progress()
    if done <= 0:
        return None
    spent = time.perf_counter() - started
    return spent * (1 - done) / done
