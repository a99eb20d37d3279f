"""Shared pieces of the Streamlit app: state, cached loaders, charts and the background runner.

Pages (``pages/*.py``) stay thin: widgets, charts and calls into ``defense/`` through here.

Caching and sessions
- A model is known by its *key*: its name plus a hash of its weights. Every cache is keyed
  by it (and by the clean subset's fraction and seed where the clean data matters).
- Models held by ``st.cache_resource`` are never mutated: every computation runs on a
  ``copy.deepcopy`` (hooks included), and each session works on its own copy (``Lab.model``).
- Slow, one-off measurements (the ablation ground truth, the pruning curves) run in a
  single background worker so that no page waits on them; a page shows a note and polls
  until they are ready. The app starts them as soon as a model is opened.

Purification threads
- Each run is a ``Runner``: one ``threading.Thread`` per run, owned by the session that
  started it (``st.session_state["runs"]``). The thread never calls ``st.*``; the Purify page
  polls it with ``st.fragment(run_every=0.5)``.
- A session that goes away stops its threads. Choice: the thread asks Streamlit's runtime
  whether its session is still active (``runtime.get_instance().is_active_session``, which a
  closed tab leaves at once) and stops itself after 10 s of absence (a brief reconnect
  keeps it alive). Without a runtime (``AppTest``, plain scripts) it falls back to a
  heartbeat: every page render marks the session seen, and the run stops if it is not
  seen for 10 s. A heartbeat alone would stop a run while the user sits on another page.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch
from plotly.subplots import make_subplots
from torch import nn

from defense import attacks, baselines, data, metrics, purify, salience
from defense import bundle as bundle_io
from defense.data import load_splits_for
from defense.paths import MODELS_DIR, bundled_models
from defense.registry import DEFENSES, SCORES
from defense.results import purified_bundle, run_report
from defense.runtime import configure_threads

DEFAULT_MODEL = "mnist-badnets"
EVAL_EVERY = 10  # steps between clean-accuracy/ASR points of a live run
POLL_S = 0.4  # the Purify page redraws a live run this often
SLIDER_STEP = 0.05  # the threshold slider's step; the pruning curves are measured on the same grid
SLIDER_GRID = [round(i * SLIDER_STEP, 4) for i in range(int(round(1 / SLIDER_STEP)) + 1)]
ABSENT_S = 10.0  # a run stops once its session has been gone this long
CURVE_METRICS = tuple(s.name for s in SCORES if s.curve)
LOAD_ERRORS = (bundle_io.BundleError, attacks.TriggerError, data.DataError, ValueError, KeyError)
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
LABELS = {s.name: s.label for s in SCORES}


# ---------------------------------------------------------------- session state


def init_state() -> None:
    """Choices several pages use, under non-widget keys so they survive page switches."""
    defaults = purify.PurifyConfig()
    for key, value in {
        "model": DEFAULT_MODEL,  # a bundled model's name, or an upload's key
        "uploads": {},  # key -> Bundle, this session's uploaded models
        "clean_fraction": data.CLEAN_FRACTION,
        "clean_seed": 0,
        "threshold_metric": defaults.metric if defaults.metric in CURVE_METRICS else "benign",
        "threshold_mode": "ratio",  # 'ratio': share of neurons marked; 'value': normalized-score cut
        "threshold_value": defaults.ratio,
        "threshold_scope": defaults.scope,
        "runs": [],  # Runner objects of this session
        "last_seen": time.monotonic(),
    }.items():
        st.session_state.setdefault(key, value)
    st.session_state["last_seen"] = time.monotonic()
    for run in st.session_state["runs"]:
        run.seen()


_this_run = threading.local()  # each script run has its own thread


def app_ran() -> None:
    """Called by app.py before it runs the page."""
    _this_run.app = True


def require_app() -> None:
    """Make sure app.py (config, state, sidebar, navigation) ran before this page; call it first in every page.

    Streamlit treats a folder named ``pages/`` as a legacy multipage app until ``st.navigation`` has
    run in the process (and AppTest resets that before every run): the page would then run alone,
    without app.py. Switch the legacy mode off and rerun, so that app.py runs and routes to the page.
    """
    if not getattr(_this_run, "app", False):
        from streamlit.runtime.pages_manager import PagesManager

        PagesManager.uses_pages_directory = False
        st.rerun()
    _this_run.app = False


def synced(widget: Callable, label: str, state_key: str, **kwargs):
    """``widget`` whose value lives in ``st.session_state[state_key]``, so it survives page switches.

    Streamlit forgets a widget's own key when its page is left; the non-widget key keeps it.
    """
    wkey = f"w_{state_key}"
    st.session_state[wkey] = st.session_state[state_key]

    def save():
        st.session_state[state_key] = st.session_state[wkey]

    return widget(label, key=wkey, on_change=save, **kwargs)


# ---------------------------------------------------------------- models and data


def bundled_names() -> list[str]:
    return bundled_models()


def weights_key(name: str, model: nn.Module) -> str:
    """A model's name plus a hash of its weights: the key of every cache."""
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return f"{name}@{h.hexdigest()[:12]}"


@st.cache_resource(show_spinner=False, max_entries=16)
def bundled(name: str) -> tuple[str, bundle_io.Bundle]:
    """(key, Bundle) of a model under assets/models; shared by all sessions, never mutated."""
    b = bundle_io.load_bundle(MODELS_DIR / name)
    return weights_key(name, b.model), b


@st.cache_resource(show_spinner=False, max_entries=8)
def _splits(dataset: str, shape: tuple, num_classes: int, fraction: float, seed: int) -> data.DataSplits:
    meta = {"dataset": dataset, "input_shape": list(shape), "num_classes": num_classes}
    return load_splits_for(meta, None, seed=seed, clean_fraction=fraction)


def splits_for(meta: dict, fraction: float, seed: int) -> data.DataSplits:
    return _splits(meta["dataset"], tuple(meta["input_shape"]), meta["num_classes"], fraction, seed)


@st.cache_resource(show_spinner=False, max_entries=16)
def _triggered(key: str, _test: data.TensorData, _trigger, target: int) -> data.TensorData:
    return metrics.triggered_set(_test, _trigger, target)


def read_upload(
    filename: str,
    payload: bytes,
    arch: str | None = None,
    like: str | None = None,
    attack: tuple[str, int] | None = None,
) -> tuple[str, bundle_io.Bundle]:
    """(key, Bundle) from an uploaded bundle (.zip) or a bare state dict (.safetensors/.pt).

    A bare state dict needs an architecture and the meta of a bundled model of the same
    dataset (``like``); with ``attack`` = (kind, target) its trigger is rebuilt by
    make_trigger instead of taken from that model. Raises LOAD_ERRORS with plain messages.
    """
    stem = Path(filename).stem or "upload"
    if filename.lower().endswith(".zip"):
        with tempfile.TemporaryDirectory(prefix="bnl-upload-") as tmp:  # private, removed afterwards
            path = Path(tmp) / "upload.zip"
            path.write_bytes(payload)
            b = bundle_io.load_bundle(path)
        b.meta["name"] = b.meta.get("name") if b.meta.get("name") not in (None, "upload") else stem
    elif filename.lower().endswith((".safetensors", ".pt", ".pth")):
        if arch is None or like is None:
            raise ValueError("a bare state dict needs an architecture and a model whose dataset and trigger it shares")
        _, base = bundled(like)
        state = bundle_io.read_state_dict(
            payload, "model.safetensors" if filename.lower().endswith(".safetensors") else filename
        )
        meta = {k: v for k, v in copy.deepcopy(base.meta).items() if k not in ("clean_acc", "asr", "training", "seed")}
        meta.update(architecture=arch, arch_kwargs={}, name=stem)
        trigger = base.trigger
        if attack is not None:
            kind, target = attack
            meta["attack"] = {
                "kind": kind,
                "target_label": int(target),
                "poison_rate": base.meta["attack"].get("poison_rate", 0.1),
                "params": {},
            }
            trigger = attacks.make_trigger(kind, meta["input_shape"])
            meta["attack"]["params"] = trigger.params()
        bundle_io.validate_meta(meta)
        model = bundle_io.build_model(meta)
        bundle_io.load_weights(model, state)
        b = bundle_io.Bundle(model.eval(), meta, trigger)
    else:
        raise ValueError(f"{filename}: expected a bundle (.zip) or a state dict (.safetensors, .pt)")
    splits_for(b.meta, data.CLEAN_FRACTION, 0)  # the app holds this dataset, in this shape
    return "upload:" + weights_key(b.name, b.model) + f":{b.trigger.kind}:{b.target}", b


@dataclass
class Lab:
    """What every page works on: the current model, this session's copy of it, and the data."""

    key: str
    bundle: bundle_io.Bundle  # shared and cached: never mutated
    model: nn.Module  # this session's own copy
    layers: dict
    splits: data.DataSplits
    triggered: data.TensorData
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def target(self) -> int:
        return self.bundle.target

    @property
    def neurons(self) -> int:
        return sum(nl.size for nl in self.layers.values())

    def evaluation(self) -> dict:
        return _evaluation(self.key, self.bundle.model, self.splits.test, self.triggered)

    def scores(self) -> dict[str, salience.NeuronScores]:
        return _scores(self.key, self.fraction, self.seed, self.bundle.model, self.splits.clean)

    def mask(self, metric: str, mode: str, value: float, scope: str) -> purify.NeuronMask:
        s = self.scores()[metric]
        return purify.mark(s, ratio=value, scope=scope) if mode == "ratio" else purify.mark(s, threshold=value)

    def threshold_mask(self, metric: str | None = None) -> purify.NeuronMask:
        ss = st.session_state
        return self.mask(
            metric or ss["threshold_metric"], ss["threshold_mode"], ss["threshold_value"], ss["threshold_scope"]
        )

    def preview(self, metric: str, mode: str, value: float, scope: str) -> dict:
        """Clean accuracy and ASR with the marked neurons zeroed, and how many are marked.

        A share on the slider's grid is read from the pruning curve once it is measured (it holds every
        grid value of the three scores); anything else is measured here and cached.
        """
        value = round(value, 4)
        grid = self.pruning_curve(scope) if mode == "ratio" else self.cut_curve(metric)
        if grid.done() and grid.exception() is None:
            hit = _curve_index(self.key, self.fraction, self.seed, f"{mode}:{scope}:{metric}", grid.result()).get(
                (metric, value)
            )
            if hit is not None:
                return {**hit, "marked": purify.marked_count(self.mask(metric, mode, value, scope))}
        return _preview(self.key, self.fraction, self.seed, metric, mode, value, scope, self)

    def ground_truth(self) -> Future:
        return background(("truth", self.key), _ground_truth, self.bundle.model, self.splits.test, self.triggered)

    def pruning_curve(self, scope: str) -> Future:
        scores = self.scores()
        return background(
            ("curve", self.key, self.fraction, self.seed, scope),
            _pruning_curve,
            self.bundle.model,
            [scores[m] for m in CURVE_METRICS],
            self.splits.test,
            self.triggered,
            scope,
        )

    def cut_curve(self, metric: str) -> Future:
        """Previews of every score cut on the slider's grid, for one score (measured in the background)."""
        return background(
            ("cut", self.key, self.fraction, self.seed, metric),
            _cut_curve,
            self.bundle.model,
            self.scores()[metric],
            self.splits.test,
            self.triggered,
        )

    def attribution(self, model: nn.Module | None = None, n: int = 8, tag: str = "") -> np.ndarray:
        """IntegratedGradients of the first ``n`` triggered test images toward the target label."""
        if model is None:
            return _attribution(self.key, n, self.bundle.model, self.triggered.x[:n], self.target)
        return attribution(model, self.triggered.x[:n], self.target)


def lab() -> Lab:
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
        ss["model"] = DEFAULT_MODEL
        st.stop()
    own = ss.get("_own_model")
    if own is None or own[0] != key:  # each session works on its own copy
        model = copy.deepcopy(b.model).eval()
        own = ss["_own_model"] = (key, model, salience.neuron_map(model))
    return Lab(
        key,
        b,
        own[1],
        own[2],
        splits,
        _triggered(key, splits.test, b.trigger, b.target),
        ss["clean_fraction"],
        ss["clean_seed"],
    )


# ---------------------------------------------------------------- cached measurements


@st.cache_resource(show_spinner=False, max_entries=32)
def _evaluation(key: str, _model, _test, _triggered) -> dict:
    return metrics.evaluate(copy.deepcopy(_model), _test, None, 0, triggered=_triggered)


@st.cache_resource(show_spinner=False, max_entries=32)
def _scores(key: str, fraction: float, seed: int, _model, _clean) -> dict[str, salience.NeuronScores]:
    model = copy.deepcopy(_model)
    layers = salience.neuron_map(model)
    return {m: salience.compute(m, model, _clean, layers) for m in SCORES.names()}


@st.cache_resource(show_spinner=False, max_entries=2048)
def _preview(key: str, fraction: float, seed: int, metric: str, mode: str, value: float, scope: str, _lab: Lab) -> dict:
    mask = _lab.mask(metric, mode, value, scope)
    result = purify.preview(_lab.model, _lab.layers, mask, _lab.splits.test, _lab.triggered)
    return {**result, "marked": purify.marked_count(mask)}


@st.cache_resource(show_spinner=False, max_entries=32)
def _curve_index(key: str, fraction: float, seed: int, which: str, _curve: pd.DataFrame) -> dict:
    return {(r.metric, round(r.ratio, 4)): {"clean_acc": r.clean_acc, "asr": r.asr} for r in _curve.itertuples()}


@st.cache_resource(show_spinner=False, max_entries=32)
def _attribution(key: str, n: int, _model, _x, target: int) -> np.ndarray:
    return attribution(_model, _x, target)


def attribution(model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """|IntegratedGradients| (black-image baseline) toward ``target``, max over channels: [N, H, W]."""
    from captum.attr import IntegratedGradients

    m = copy.deepcopy(model).eval()
    dev = next(m.parameters()).device
    attr = IntegratedGradients(m).attribute(x.to(dev), target=target, n_steps=32)
    return attr.abs().amax(1).detach().cpu().numpy()


def trigger_share(attr: np.ndarray, trigger) -> tuple[float, float] | None:
    """For patch triggers: (share of the attribution on the trigger's pixels, share of the image they cover)."""
    mask = getattr(trigger, "mask", None)
    if mask is None:
        return None
    where = (mask.amax(0) > 0).numpy()
    if not 0 < where.mean() < 0.5:  # a blend covers the whole image: no place to point at
        return None
    return float(attr[:, where].sum() / max(attr.sum(), 1e-12)), float(where.mean())


def _ground_truth(model, test, triggered) -> dict:
    configure_threads(share_with_server=True)  # per thread in torch: a new thread would take every core
    model = copy.deepcopy(model)
    return metrics.backdoor_ground_truth(model, salience.neuron_map(model), test, triggered)


def _pruning_curve(model, scores, test, triggered, scope) -> pd.DataFrame:
    configure_threads(share_with_server=True)
    model = copy.deepcopy(model)
    return purify.pruning_curve(
        model, salience.neuron_map(model), scores, test, triggered, ratios=SLIDER_GRID, scope=scope
    )


def _cut_curve(model, scores, test, triggered) -> pd.DataFrame:
    configure_threads(share_with_server=True)
    model = copy.deepcopy(model)
    return purify.pruning_curve(
        model, salience.neuron_map(model), [scores], test, triggered, ratios=SLIDER_GRID, by="value"
    )


@st.cache_resource(show_spinner=False)
def _jobs() -> tuple[ThreadPoolExecutor, dict, threading.Lock]:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnl-measure"), {}, threading.Lock()


def background(key: tuple, fn: Callable, *args) -> Future:
    """The (shared, cached) future of ``fn(*args)`` run once in the background worker."""
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
    def _poll():
        if all(f.done() for f in futures):
            st.rerun()

    _poll()
    return False


def warm(lab_: Lab) -> None:
    """Start the slow measurements of the current model in the background."""
    lab_.ground_truth()
    lab_.pruning_curve(st.session_state["threshold_scope"])
    lab_.cut_curve(st.session_state["threshold_metric"])  # so the slider is quick by score cut too, once chosen


# ---------------------------------------------------------------- sidebar


def sidebar(lab_: Lab) -> None:
    with st.sidebar:
        st.markdown("### Current model")
        ev = lab_.evaluation()
        st.markdown(f"**{lab_.name}**  \n{lab_.bundle.meta['attack']['kind']} attack → label {lab_.target}")
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


def intro(text: str) -> None:
    st.markdown(text)


def points(delta: float) -> str:
    """A change of a rate, in percentage points."""
    return f"{100 * delta:+.1f} points"


# ---------------------------------------------------------------- charts


def grid_shape(n: int) -> tuple[int, int]:
    cols = max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def _grid(values: torch.Tensor | np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.full(rows * cols, np.nan)
    out[: len(values)] = np.asarray(values, dtype=float)
    return out.reshape(rows, cols)


def scaled(scores: salience.NeuronScores, scale: str) -> dict[str, torch.Tensor]:
    """'raw' values, or per-layer 'minmax'/'rank' importance (0 = most suspect)."""
    return scores.layers if scale == "raw" else scores.normalized(scale)


def _heatmap(fig: go.Figure, col: int, values, hover: dict, marked, colorbar: dict | None, height: int) -> None:
    """One near-square grid of neurons (neuron 0 top left) in subplot ``col``, marked ones outlined in red."""
    n = len(values)
    rows, cols = grid_shape(n)
    custom = np.dstack([_grid(np.arange(n), rows, cols)] + [_grid(v, rows, cols) for v in hover.values()])
    tip = "neuron %{customdata[0]:.0f}" + "".join(
        f"<br>{name} %{{customdata[{i + 1}]:.4g}}" for i, name in enumerate(hover)
    )
    fig.add_trace(
        go.Heatmap(
            z=_grid(values, rows, cols),
            customdata=custom,
            hovertemplate=tip + "<extra></extra>",
            colorscale="Viridis",
            showscale=colorbar is not None,
            colorbar=colorbar or {},
        ),
        1,
        col,
    )
    if marked is not None and marked.any():
        idx = marked.nonzero().flatten().numpy()
        fig.add_trace(
            go.Scatter(
                x=idx % cols,
                y=idx // cols,
                mode="markers",
                hoverinfo="skip",
                showlegend=False,
                name="marked",
                marker=dict(
                    symbol="square-open",
                    color="#ff2b2b",
                    line=dict(width=2.5),
                    size=max(5, int((height - 90) / max(rows, cols) * 0.8)),
                ),
            ),
            1,
            col,
        )
    axis = f"x{col if col > 1 else ''}"
    bare = dict(showticklabels=False, showgrid=False, zeroline=False, ticks="", showline=False)
    fig.update_xaxes(**bare, range=[-0.5, cols - 0.5], row=1, col=col)
    fig.update_yaxes(**bare, range=[rows - 0.5, -0.5], scaleanchor=axis, row=1, col=col)


def layer_heatmaps(
    layer: str,
    panels: list[tuple[str, torch.Tensor, str]],
    hover: dict[str, torch.Tensor],
    marked: torch.Tensor | None = None,
    height: int = 300,
) -> go.Figure:
    """One layer's neurons, side by side under several scores, each with its own colour scale.

    ``panels``: (title, values, colorbar title); ``hover``: raw scores shown on hover.
    """
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.16)
    for i, (_, values, bar) in enumerate(panels):
        x = (i + 1) / len(panels) - 0.08 / len(panels)
        _heatmap(
            fig,
            i + 1,
            values,
            hover,
            marked,
            dict(title=dict(text=bar, side="right"), x=x, len=0.9, thickness=12),
            height,
        )
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=60, b=10),
        title=dict(text=layer, x=0, y=0.98, yanchor="top", font=dict(size=15)),
    )
    return fig


def layers_row(
    values: dict[str, torch.Tensor],
    hover: dict[str, dict],
    marked: dict[str, torch.Tensor],
    bar: str,
    height: int = 320,
) -> go.Figure:
    """Every layer side by side under one score (shared colour scale in [0, 1]), marked neurons outlined."""
    names = list(values)
    fig = make_subplots(
        rows=1,
        cols=len(names),
        horizontal_spacing=0.04,
        subplot_titles=[f"{n} ({int(marked[n].sum())}/{len(marked[n])} marked)" for n in names],
    )
    for i, n in enumerate(names):
        last = i == len(names) - 1
        _heatmap(
            fig,
            i + 1,
            values[n],
            hover[n],
            marked[n],
            dict(title=dict(text=bar, side="right"), thickness=12) if last else None,
            height,
        )
    fig.update_traces(zmin=0, zmax=1, selector=dict(type="heatmap"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def image_grid(
    rows: list[tuple[str, np.ndarray, list[str]]], colorscale="gray", height_per_row: int = 150
) -> go.Figure:
    """Rows of small images: (row label, images [N, H, W], titles); ``colorscale`` one, or one per row.

    Grey rows are pixels in [0, 1]; other rows (attributions) are each scaled to their own maximum.
    """
    scales = [colorscale] * len(rows) if isinstance(colorscale, str) else list(colorscale)
    n = max(len(r[1]) for r in rows)
    fig = make_subplots(
        rows=len(rows),
        cols=n,
        subplot_titles=[t for r in rows for t in r[2]],
        horizontal_spacing=0.01,
        vertical_spacing=0.12,
    )
    for i, (label, images, _) in enumerate(rows):
        for j, img in enumerate(images):
            scale = scales[i]
            z, what = (img, "pixel") if scale == "gray" else (img / (float(np.max(img)) or 1.0), "relative attribution")
            fig.add_trace(
                go.Heatmap(
                    z=z,
                    colorscale=scale,
                    zmin=0,
                    zmax=1,
                    showscale=False,
                    hovertemplate=f"x %{{x}}, y %{{y}}: {what} %{{z:.2f}}<extra></extra>",
                ),
                i + 1,
                j + 1,
            )
        fig.update_yaxes(title_text=label, row=i + 1, col=1)
    bare = dict(showticklabels=False, showgrid=False, zeroline=False, ticks="", showline=False)
    fig.update_xaxes(**bare)
    fig.update_yaxes(**bare, autorange="reversed")
    for r in range(len(rows)):
        for c in range(n):
            k = r * n + c + 1
            fig.update_yaxes(scaleanchor=f"x{k if k > 1 else ''}", row=r + 1, col=c + 1)
    fig.update_annotations(font_size=12)
    fig.update_layout(height=height_per_row * len(rows) + 40, margin=dict(l=30, r=10, t=30, b=10))
    return fig


def pruning_figure(curve: pd.DataFrame, current: float | None) -> go.Figure:
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["clean accuracy", "attack success rate"], horizontal_spacing=0.08
    )
    for i, metric in enumerate(curve["metric"].unique()):
        part = curve[curve["metric"] == metric]
        for col, y in ((1, "clean_acc"), (2, "asr")):
            fig.add_trace(
                go.Scatter(
                    x=part["ratio"],
                    y=part[y],
                    mode="lines+markers",
                    name=LABELS.get(metric, metric),
                    legendgroup=metric,
                    showlegend=col == 1,
                    line=dict(color=COLORS[i]),
                ),
                1,
                col,
            )
    if current is not None:
        for col in (1, 2):
            fig.add_vline(x=current, line=dict(color="#ff2b2b", dash="dash"), row=1, col=col)
        fig.add_annotation(
            x=current, y=1.04, xref="x", yref="y", text="your choice", showarrow=False, font=dict(color="#ff2b2b")
        )
    fig.update_xaxes(title_text="share of neurons zeroed (most suspect first)", range=[-0.02, 1.02])
    fig.update_yaxes(range=[-0.02, 1.08], tickformat=".0%")
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


# ---------------------------------------------------------------- purification runs


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
    build: Callable[[], purify.Purification]  # called in the thread (FP measures its mask there)
    session_id: str | None = None
    color: str = COLORS[0]
    records: list = field(default_factory=list)
    status: str = "starting"
    error: str | None = None
    run: purify.Purification | None = None
    last_seen: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.perf_counter)
    attr_after: np.ndarray | None = None  # the purified model's attribution, computed once by the page
    _gone_since: float | None = None
    _stop: bool = False

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
                logging.getLogger("appkit").warning("bnl: run '%s' stopped: its session went away", self.label)
            else:
                self.status = "stopped" if self._stop else "done"
        except Exception as err:  # noqa: BLE001 - shown on the page; the thread must not die silently
            self.error = " ".join(str(err).split()) or type(err).__name__
            self.status = "error"

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


def purification_config(steps: int, lr: float, lam: float) -> purify.PurifyConfig:
    """The recommended settings with the page's steps, learning rate, λ and the Threshold page's marking."""
    ss = st.session_state
    cfg = replace(purify.PurifyConfig(), steps=int(steps), lr=float(lr), lam=float(lam), eval_every=EVAL_EVERY)
    if ss["threshold_mode"] == "ratio":
        cfg = replace(cfg, ratio=float(ss["threshold_value"]), scope=ss["threshold_scope"])
    return cfg.validate()


def start_run(lab_: Lab, defense: str, cfg: purify.PurifyConfig) -> Runner:
    """A new run of ``defense`` on a private copy of this session's model, started in its own thread."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ss = st.session_state
    model = copy.deepcopy(lab_.model)  # taken here, in the page's thread: no hooks of a preview can be in flight
    scores = lab_.scores()
    clean, test, trig = lab_.splits.clean, lab_.splits.test, lab_.triggered
    mask = None
    marking = DEFENSES[defense].marking
    if marking is not None and ss["threshold_mode"] == "value":
        mask = lab_.mask(marking[0], "value", ss["threshold_value"], ss["threshold_scope"])

    def build() -> purify.Purification:
        return baselines.make(
            defense, model, clean, test, trig, cfg, scores=scores[marking[0]] if marking else None, mask=mask
        )

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
        color=COLORS[(number - 1) % len(COLORS)],
    )
    runs.append(runner)
    return runner.start()


def runs_figure(runs: list[Runner]) -> go.Figure:
    """Loss, clean accuracy and ASR against the step, one colour per run.

    Redrawn twice a second while a run trains, so it is written as a plain spec (no make_subplots): building
    it costs ~7 ms instead of ~60 ms, time the training thread would otherwise wait for the GIL.
    """
    titles = ["training loss", "clean accuracy", "attack success rate"]
    gap, width = 0.07, (1 - 2 * 0.07) / 3
    layout = {
        "height": 330,
        "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
        "uirevision": "runs",
        "legend": {"orientation": "h", "y": -0.25},
        "annotations": [],
    }
    for i, title in enumerate(titles):
        n = "" if i == 0 else str(i + 1)
        x0 = i * (width + gap)
        layout[f"xaxis{n}"] = {"domain": [x0, x0 + width], "anchor": f"y{n}", "title": {"text": "step"}}
        layout[f"yaxis{n}"] = {"anchor": f"x{n}", **({"range": [-0.02, 1.04], "tickformat": ".0%"} if i else {})}
        layout["annotations"].append(
            {
                "text": title,
                "x": x0 + width / 2,
                "y": 1.0,
                "xref": "paper",
                "yref": "paper",
                "xanchor": "center",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 14},
            }
        )
    data = []
    for run in runs:
        recs = list(run.records)
        losses = [(r["step"], r["task_loss"]) for r in recs if math.isfinite(r["task_loss"])]
        evals = [r for r in recs if "asr" in r]
        common = {"type": "scatter", "name": run.label, "legendgroup": run.label, "line": {"color": run.color}}
        if losses:
            data.append({**common, "x": [s for s, _ in losses], "y": [v for _, v in losses], "mode": "lines"})
        for i, key in ((2, "clean_acc"), (3, "asr")):
            data.append(
                {
                    **common,
                    "x": [r["step"] for r in evals],
                    "y": [r[key] for r in evals],
                    "mode": "lines+markers",
                    "xaxis": f"x{i}",
                    "yaxis": f"y{i}",
                    "showlegend": not losses and i == 2,
                }
            )
    return go.Figure({"data": data, "layout": layout})


def report_json(report: dict) -> str:
    return json.dumps(report, indent=2)
