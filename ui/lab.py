"""The current model: the shared cached bundle, this session's copy of it, its data and cached measurements.

- A model is known by its *key*: its name plus ``bundle.fingerprint``, a content hash of its meta.json
  (architecture, normalization, attack and its parameters), weights and trigger tensors. Every cache is
  keyed by it (and by the clean subset's fraction and seed where the clean data matters), so two uploads
  that differ in anything that changes a number never share a cached result, whichever sessions they are in.
- Models held by ``st.cache_resource`` are never mutated: every computation runs on a ``copy.deepcopy``
  (hooks included), and each session works on its own copy (``Lab.model``).
- The slow measurements (the ablation ground truth, the pruning curves) run in the background worker
  (``ui.jobs``); ``warm`` starts them as soon as a model is opened.
"""

from __future__ import annotations

import copy
import dataclasses
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st
import torch
from torch import nn

from defense import attacks, cost, data, explain, masking, metrics, salience
from defense import bundle as bundle_io
from defense.ablation import Progress
from defense.baselines import recommended
from defense.data import load_splits_for
from defense.neurons import NeuronLayer, NeuronMask, NeuronScores, marked_count, neuron_map
from defense.paths import MODELS_DIR, bundled_models
from defense.registry import SCORES
from defense.runtime import StopCheck, configure_threads
from defense.targets import Target
from ui import jobs, state
from ui.jobs import background

SLIDER_STEP = 0.05  # the threshold slider's step; the pruning curves are measured on the same grid
SLIDER_GRID = [round(i * SLIDER_STEP, 4) for i in range(int(round(1 / SLIDER_STEP)) + 1)]
LOAD_ERRORS = (bundle_io.BundleError, attacks.TriggerError, data.DataError, ValueError, KeyError)


def bundled_names() -> list[str]:
    return bundled_models()


def model_key(b: bundle_io.Bundle) -> str:
    """A bundle's name plus its content hash (meta, weights, trigger): the key of every cache."""
    return f"{b.name}@{bundle_io.fingerprint(b)}"


@st.cache_resource(show_spinner=False, max_entries=16)
def bundled(name: str) -> tuple[str, bundle_io.Bundle]:
    """(key, Bundle) of a model under assets/models; shared by all sessions, never mutated."""
    b = bundle_io.load_bundle(MODELS_DIR / name)
    return model_key(b), b


@st.cache_resource(show_spinner=False, max_entries=8)
def _splits(dataset: str, shape: tuple, num_classes: int, fraction: float, seed: int) -> data.DataSplits:
    from ui.owndata import data_root  # the folder named at launch (make run DATA=...)

    meta = {"dataset": dataset, "input_shape": list(shape), "num_classes": num_classes}
    return load_splits_for(meta, data_root() if dataset != "mnist5k" else None, seed=seed, clean_fraction=fraction)


def splits_for(meta: dict, fraction: float, seed: int) -> data.DataSplits:
    return _splits(meta["dataset"], tuple(meta["input_shape"]), meta["num_classes"], fraction, seed)


# The two caches that hold images per model (a triggered copy of the test set; the preview's subsets, which
# may be those very sets): a few models' worth, so that a server many uploads pass through keeps little of
# them once their sessions close (bench/app_load.py's soak); a miss costs one pass of the trigger.
IMAGE_CACHE_MODELS = 6


@st.cache_resource(show_spinner=False, max_entries=IMAGE_CACHE_MODELS)
def _triggered(key: str, _test: data.TensorData, _trigger: attacks.Trigger, _target: Target) -> data.TensorData:
    return metrics.triggered_set(_test, _trigger, _target)


@st.cache_resource(show_spinner=False, max_entries=IMAGE_CACHE_MODELS)
def _preview_sets(key: str, _model: nn.Module, shape: tuple, _test, _triggered) -> tuple:
    return cost.preview_sets(copy.deepcopy(_model), shape, _test, _triggered)


@dataclass
class Lab:
    """What every page works on: the current model, this session's copy of it, and the data."""

    key: str
    bundle: bundle_io.Bundle  # shared and cached: never mutated
    model: nn.Module  # this session's own copy
    layers: dict[str, NeuronLayer]
    splits: data.DataSplits
    triggered: data.TensorData
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def target(self) -> Target:
        return self.bundle.target

    @property
    def neurons(self) -> int:
        return sum(nl.size for nl in self.layers.values())

    def evaluation(self) -> dict:
        return _evaluation(self.key, self.bundle.model, self.splits.test, self.triggered)

    @property
    def preview_sets(self) -> tuple[data.TensorData, data.TensorData]:
        """(test, triggered) images of the Threshold page's previews and curves: all of them for a small
        model, a seeded subset for a big one, so that a slider move stays under a second (defense/cost.py)."""
        shape = tuple(self.bundle.meta["input_shape"])
        return _preview_sets(self.key, self.bundle.model, shape, self.splits.test, self.triggered)

    def preview_evaluation(self) -> dict:
        """Clean accuracy and ASR on the preview images, the baseline the previews are compared with."""
        test, triggered = self.preview_sets
        if test is self.splits.test and triggered is self.triggered:
            return self.evaluation()
        return _evaluation(f"{self.key}+preview", self.bundle.model, test, triggered)

    def scores(self) -> dict[str, NeuronScores]:
        """The registered scores of the original model, in registry order: the fast ones at once, a slow one
        (``cost='slow'``, e.g. ANP) only once the background worker has measured it (``slow_score``)."""
        fast = tuple(s.name for s in SCORES if s.cost != "slow")
        out = dict(_scores(self.key, self.fraction, self.seed, fast, self.bundle.model, self.splits.clean))
        for name, job in self.slow_jobs().items():
            if job.done() and job.exception() is None:
                out[name] = job.result()
        return {n: out[n] for n in SCORES.names() if n in out}

    def slow_jobs(self) -> dict[str, Future]:
        """The slow scores' background jobs, queued the Purify page's first choice's marking score first."""
        first = recommended().marking[0]
        ordered = sorted((s for s in SCORES if s.cost == "slow"), key=lambda s: s.name != first)
        return {s.name: self.slow_score(s.name) for s in ordered}

    def slow_score(self, name: str, low: bool = True) -> Future:
        """A slow score, measured in the background worker (on a copy of the model); ``low`` unless a page
        waits for it."""
        return background(
            ("score", self.key, self.fraction, self.seed, name),
            _one_score,
            name,
            self.bundle.model,
            self.splits.clean,
            low=low,  # minutes on a big model: the page's ground truth and curves go first
        )

    def score(self, name: str) -> NeuronScores:
        """One score; for a slow one not measured yet, a note on the page and the page stops (it reruns when ready)."""
        have = self.scores()
        if name not in have:
            job = self.slow_score(name, low=False)  # the page waits for it
            if not jobs.wait_note([job], f"Measuring {SCORES[name].label} in the background (slow on a CPU)."):
                st.stop()
            if job.exception() is not None:
                st.error(f"{SCORES[name].label} could not be measured: {job.exception()}")
                st.stop()
            return job.result()
        return have[name]

    def mask(self, metric: str, mode: str, value: float, scope: str) -> NeuronMask:
        s = self.score(metric)
        return masking.mark(s, ratio=value, scope=scope) if mode == "ratio" else masking.mark(s, threshold=value)

    def threshold_mask(self, metric: str | None = None) -> NeuronMask:
        """The mask set on the Threshold page (by ``metric`` instead of its score, if given)."""
        chosen, mode, value, scope = state.threshold()
        return self.mask(metric or chosen, mode, value, scope)

    def preview(self, metric: str, mode: str, value: float, scope: str) -> dict:
        """Clean accuracy and ASR with the marked neurons zeroed, and how many are marked.

        A share on the slider's grid is read from the pruning curve once it is measured (it holds every
        grid value of the curve's scores); anything else is measured here and cached.
        """
        value = round(value, 4)
        grid = self.pruning_curve(scope) if mode == "ratio" else self.cut_curve(metric)
        if grid.done() and grid.exception() is None:
            which = f"{mode}:{scope}:{metric}"
            hit = _curve_index(self.key, self.fraction, self.seed, which, grid.result()).get((metric, value))
            if hit is not None:
                return {**hit, "marked": marked_count(self.mask(metric, mode, value, scope))}
        return _preview(self.key, self.fraction, self.seed, metric, mode, value, scope, self)

    def ground_truth(self) -> Future:
        return background(("truth", self.key), _ground_truth, self.bundle.model, self.splits.test, self.triggered)

    def tac_truth(self) -> Future:
        """The second ground truth, trigger-activated change (measured in the background)."""
        return background(("tac", self.key), _tac_truth, self.bundle.model, self.splits.test, self.bundle)

    def bs_stability(self) -> Future:
        """Benign salience on the three clean subsets (seeds 0–2 at this clean share): ranks and correlation,
        measured in the background (six salience passes and a per-image one: seconds on a deep model)."""
        return background(("stability", self.key, self.fraction), _bs_stability, self.bundle, self.fraction)

    def pruning_curve(self, scope: str) -> Future:
        """Previews of every share on the slider's grid, for the curve's scores (measured in the background)."""
        scores, names = self.scores(), state.curve_scores()
        return background(
            ("curve", self.key, self.fraction, self.seed, scope, tuple(names)),
            _pruning_curve,
            self.bundle.model,
            [scores[m] for m in names],
            *self.preview_sets,
            scope,
        )

    def cut_curve(self, metric: str) -> Future:
        """Previews of every score cut on the slider's grid, for one score (measured in the background)."""
        return background(
            ("cut", self.key, self.fraction, self.seed, metric),
            _cut_curve,
            self.bundle.model,
            self.score(metric),
            *self.preview_sets,
        )

    def attribution(self, model: nn.Module | None = None, n: int = 8) -> np.ndarray:
        """Integrated gradients of the first ``n`` triggered test images toward the target label.

        Of the original model (cached) unless another ``model`` is given (a purified one).
        """
        if model is None:
            return _attribution(self.key, n, self.bundle.model, self.triggered.x[:n], self.triggered.y[:n])
        return explain.attribution(model, self.triggered.x[:n], self.triggered.y[:n])


def current_lab() -> Lab:
    """The current model of this session (errors on the page, then stop)."""
    ss = st.session_state
    try:
        if ss["model"] in ss["uploads"]:
            key, b = ss["model"], ss["uploads"][ss["model"]]
        else:
            key, b = bundled(ss["model"])
        splits = splits_for(b.meta, ss["clean_fraction"], ss["clean_seed"])
    except LOAD_ERRORS as err:
        st.error(f"The model '{ss['model']}' cannot be opened: {err}")
        ss["model"] = state.DEFAULT_MODEL
        st.stop()
    from ui.owndata import clean_override

    override = clean_override(b.meta)
    if override is not None:  # the defender's uploaded clean images replace the clean subset
        key = f"{key}+clean:{override[0]}"
        splits = dataclasses.replace(splits, clean=override[1])
    own = ss.get("_own_model")
    if own is None or own[0] != key:  # each session works on its own copy
        model = copy.deepcopy(b.model).eval()
        own = ss["_own_model"] = (key, model, neuron_map(model))
    triggered = _triggered(key, splits.test, b.trigger, b.target)
    return Lab(key, b, own[1], own[2], splits, triggered, ss["clean_fraction"], ss["clean_seed"])


def warm(lab_: Lab) -> None:
    """Start the slow measurements of the current model in the background."""
    lab_.ground_truth()
    lab_.tac_truth()  # forward passes only: queued before the slow scores that lab_.scores() queues
    lab_.pruning_curve(st.session_state["threshold_scope"])
    lab_.cut_curve(st.session_state["threshold_metric"])  # so the slider is quick by score cut too, once chosen


# ---------------------------------------------------------------- cached measurements


@st.cache_resource(show_spinner=False, max_entries=32)
def _evaluation(key: str, _model: nn.Module, _test: data.TensorData, _triggered: data.TensorData) -> dict:
    return metrics.evaluate(copy.deepcopy(_model), _test, None, 0, triggered=_triggered)


@st.cache_resource(show_spinner=False, max_entries=32)
def _scores(key: str, fraction: float, seed: int, names: tuple[str, ...], _model: nn.Module, _clean) -> dict:
    model = copy.deepcopy(_model)
    layers = neuron_map(model)
    return {m: salience.compute(m, model, _clean, layers) for m in names}


def _tac_truth(model: nn.Module, test: data.TensorData, b, should_stop: StopCheck = None) -> dict:
    """Runs in the background worker (one forward pass of each kind: nothing long to cancel)."""
    from defense import truth

    configure_threads(share_with_server=True)
    model = copy.deepcopy(model)
    return truth.tac_truth(model, neuron_map(model), test, b.trigger, b.target)


def _bs_stability(b, fraction: float, should_stop: StopCheck = None) -> dict:
    """Runs in the background worker (a few passes, nothing long to cancel)."""
    from defense import stability

    configure_threads(share_with_server=True)
    model = copy.deepcopy(b.model)
    layers = neuron_map(model)
    cleans = [load_splits_for(b.meta, None, seed=s, clean_fraction=fraction).clean for s in range(3)]
    runs = [salience.compute("benign", model, clean, layers) for clean in cleans]
    medians = [salience.compute("benign-median", model, clean, layers) for clean in cleans]
    return {
        **stability.stability(runs),
        "hardest": stability.hardest_images_report(model, cleans[0], layers),
        "median_spearman_min": stability.stability(medians)["spearman_min"],
    }


def _one_score(name: str, model: nn.Module, clean, should_stop: StopCheck = None) -> NeuronScores:
    """Runs in the background worker: never calls st.*; works on its own copy of the model.

    ``should_stop`` is accepted (every job takes it); the slow scores stop, or give way to other jobs, at
    their ``runtime.step_done`` calls instead (``jobs.JobBoard``).
    """
    work = copy.deepcopy(model)
    return salience.compute(name, work, clean, neuron_map(work))


@st.cache_resource(show_spinner=False, max_entries=2048)
def _preview(key: str, fraction: float, seed: int, metric: str, mode: str, value: float, scope: str, _lab: Lab) -> dict:
    mask = _lab.mask(metric, mode, value, scope)
    result = masking.preview(_lab.model, _lab.layers, mask, *_lab.preview_sets)
    return {**result, "marked": marked_count(mask)}


@st.cache_resource(show_spinner=False, max_entries=32)
def _curve_index(key: str, fraction: float, seed: int, which: str, _curve: pd.DataFrame) -> dict:
    return {(r.metric, round(r.ratio, 4)): {"clean_acc": r.clean_acc, "asr": r.asr} for r in _curve.itertuples()}


@st.cache_resource(show_spinner=False, max_entries=32)
def _attribution(key: str, n: int, _model: nn.Module, _x, _target: torch.Tensor) -> np.ndarray:
    return explain.attribution(_model, _x, _target)


# ---------------------------------------------------------------- background jobs (never call st.*)


def _ground_truth(
    model: nn.Module,
    test: data.TensorData,
    triggered: data.TensorData,
    should_stop: StopCheck = None,
    progress: Progress | None = None,
) -> dict:
    """The ablation ground truth, rerunning only the layers after each neuron (defense/ablation.py).

    Its images and neuron sample follow ``ablation.plan``: a big model is measured on fewer images, and
    past the budget on a uniform sample of neurons (the page says so), so it cannot hold the worker for hours.
    """
    from defense.ablation import ground_truth

    configure_threads(share_with_server=True)  # per thread in torch: a new thread would take every core
    model = copy.deepcopy(model)
    return ground_truth(
        model,
        neuron_map(model),
        test,
        triggered,
        max_images=None,
        should_stop=should_stop,
        progress=progress,
    )


def _pruning_curve(
    model: nn.Module,
    scores: list,
    test,
    triggered,
    scope: str,
    should_stop: StopCheck = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    configure_threads(share_with_server=True)
    model = copy.deepcopy(model)
    return masking.pruning_curve(
        model,
        neuron_map(model),
        scores,
        test,
        triggered,
        ratios=SLIDER_GRID,
        scope=scope,
        should_stop=should_stop,
        progress=progress,
    )


def _cut_curve(
    model: nn.Module,
    scores: NeuronScores,
    test,
    triggered,
    should_stop: StopCheck = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    configure_threads(share_with_server=True)
    model = copy.deepcopy(model)
    return masking.pruning_curve(
        model,
        neuron_map(model),
        [scores],
        test,
        triggered,
        ratios=SLIDER_GRID,
        by="value",
        should_stop=should_stop,
        progress=progress,
    )
