"""Plotly line and scatter charts: the pruning curve, the ROC of the scores, the scatter of two scores, live runs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from defense.registry import SCORES
from ui import palette


def score_label(name: str) -> str:
    """The registered score's label (its name if it is not registered)."""
    return SCORES[name].label if name in SCORES else name


def score_labels() -> dict[str, str]:
    """Every score's label, by name."""
    return {s.name: s.label for s in SCORES}


def pruning_figure(
    curve: pd.DataFrame, current: float | None, featured: str | None = None, height: int = 330
) -> go.Figure:
    """Clean accuracy and ASR against the share of neurons zeroed, one line per score; ``current`` marked.

    ``featured``: the score chosen on the page, drawn thicker.
    """
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["clean accuracy", "attack success rate"], horizontal_spacing=0.13
    )
    for metric in curve["metric"].unique():
        part = curve[curve["metric"] == metric]
        for col, y in ((1, "clean_acc"), (2, "asr")):
            fig.add_trace(
                go.Scatter(
                    x=part["ratio"],
                    y=part[y],
                    mode="lines+markers",
                    name=score_label(metric),
                    legendgroup=metric,
                    showlegend=col == 1,
                    line=dict(color=palette.score_color(metric), width=3 if metric == featured else 2),
                    marker=dict(size=5),
                ),
                1,
                col,
            )
    if current is not None:
        for col in (1, 2):
            fig.add_vline(x=current, line=dict(color=palette.CHOICE, dash="dash", width=2), row=1, col=col)
            fig.add_annotation(
                x=current,
                y=1.0,
                xref=f"x{col if col > 1 else ''}",
                yref="y domain" if col == 1 else "y2 domain",
                text="your choice",
                showarrow=False,
                xanchor="left" if current < 0.6 else "right",
                yanchor="top",
                font=dict(color=palette.CHOICE),
                bgcolor="rgba(255,255,255,0.8)",
            )
    fig.update_xaxes(title_text="share zeroed", range=[-0.02, 1.02], tickformat=".0%")
    fig.update_yaxes(range=[-0.02, 1.04], tickformat=".0%")
    fig.update_layout(
        height=height,
        margin=dict(l=6, r=6, t=30, b=6),
        legend=dict(orientation="h", x=0, y=-0.28, yanchor="top"),
    )
    return fig


def roc_figure(
    curves: Sequence[tuple[str, Sequence[float], Sequence[float], float]], bold: str, colors: Sequence[str] = ()
) -> go.Figure:
    """ROC of finding infected neurons: one (label, fpr, tpr, auc) per score, the ``bold`` label drawn thicker.

    ``colors``: one per curve (the score's colour from ui.palette).
    """
    fig = go.Figure()
    for i, (label, fpr, tpr, auc) in enumerate(curves):
        fig.add_trace(
            go.Scatter(
                x=fpr,
                y=tpr,
                mode="lines",
                name=f"{label} (AUC {auc:.2f})",
                line=dict(
                    color=colors[i] if i < len(colors) else palette.RUNS[i % len(palette.RUNS)],
                    width=4 if label == bold else 2,
                ),
            )
        )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color=palette.CHANCE, dash="dot"), name="chance (0.50)")
    )
    fig.update_layout(
        title="finding infected neurons: ROC",
        height=560,
        margin=dict(l=6, r=6, t=40, b=6),
        xaxis=dict(title="share of clean neurons flagged", tickformat=".0%", range=[-0.02, 1.01]),
        yaxis=dict(title="share of infected found", tickformat=".0%", range=[-0.02, 1.01]),
        # below the x axis's title: beside the plot, ten long names left the plot a strip at 1280 px
        legend=dict(orientation="h", x=0, xanchor="left", y=-0.2, yanchor="top"),
    )
    return fig


def truth_scatter(frame: pd.DataFrame, x: str, y: str) -> go.Figure:
    """Score ``y`` against score ``x``, one point per neuron, coloured by the measured ground truth.

    ``frame``: salience.scores_frame plus the columns 'infected' and 'backdoor_effect'.
    """
    shown = frame.assign(truth=frame["infected"].map({True: "infected", False: "clean"}))
    fig = px.scatter(
        shown,
        x=x,
        y=y,
        color="truth",
        color_discrete_map={"infected": palette.INFECTED, "clean": palette.CLEAN},
        hover_data={
            "layer": True,
            "neuron": True,
            y: ":.4g",
            x: ":.4g",
            "backdoor_effect": ":.3g",
            "truth": False,
        },
        labels={y: score_label(y), x: score_label(x)},
        title=f"{score_label(y)} against {score_label(x)}",
    )
    fig.update_layout(
        height=400, margin=dict(l=6, r=6, t=40, b=6), legend=dict(x=1.02, y=0, xanchor="left", yanchor="bottom")
    )
    return fig


def runs_figure(runs: Sequence, height: int = 300) -> go.Figure:
    """Clean cross-entropy, clean accuracy and ASR against the step, one colour per run (``ui.runs.Runner``).

    The loss panel is the plain cross-entropy of each training batch (``clean_ce``: no penalty, no
    distillation), the one loss every defense shares, so the lines are comparable.

    Redrawn twice a second while a run trains, so it is written as a plain spec (no make_subplots): building
    it costs ~7 ms instead of ~60 ms, time the training thread would otherwise wait for the GIL.
    """
    titles = ["clean cross-entropy", "clean accuracy", "attack success rate"]
    # a running run's axis spans its planned steps from the start; a finished one, the steps it took
    last_step = max(
        [(r.steps if getattr(r, "active", False) else r.records[-1]["step"] if r.records else 0) for r in runs] + [1]
    )
    gap, width = 0.08, (1 - 2 * 0.08) / 3
    layout = {
        "height": height,
        "margin": {"l": 6, "r": 6, "t": 30, "b": 6},
        "uirevision": "runs",
        "legend": {"orientation": "h", "x": 0, "y": -0.3, "yanchor": "top"},
        "annotations": [],
        "template": "bnl",
    }
    for i, title in enumerate(titles):
        n = "" if i == 0 else str(i + 1)
        x0 = i * (width + gap)
        layout[f"xaxis{n}"] = {
            "range": [0, last_step],
            "domain": [x0, x0 + width],
            "anchor": f"y{n}",
            "title": {"text": "step"},
            "rangemode": "tozero",
        }
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
                "font": {"size": 16},
            }
        )
    data = []
    for run in runs:
        recs = list(run.records)
        losses = [(r["step"], r.get("clean_ce", r["task_loss"])) for r in recs]
        losses = [(s, v) for s, v in losses if math.isfinite(v)]
        evals = [r for r in recs if "asr" in r]
        name = getattr(run, "full_label", run.label)
        common = {"type": "scatter", "name": name, "legendgroup": run.label, "line": {"color": run.color, "width": 2.5}}
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
