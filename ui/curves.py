"""Plotly line and scatter charts: the pruning curve, the ROC of the scores, the scatter of two scores, live runs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from defense.registry import SCORES
from ui.charts import COLORS, MARK_COLOR


def score_label(name: str) -> str:
    """The registered score's label (its name if it is not registered)."""
    return SCORES[name].label if name in SCORES else name


def pruning_figure(curve: pd.DataFrame, current: float | None) -> go.Figure:
    """Clean accuracy and ASR against the share of neurons zeroed, one line per score; ``current`` marked."""
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
                    name=score_label(metric),
                    legendgroup=metric,
                    showlegend=col == 1,
                    line=dict(color=COLORS[i]),
                ),
                1,
                col,
            )
    if current is not None:
        for col in (1, 2):
            fig.add_vline(x=current, line=dict(color=MARK_COLOR, dash="dash"), row=1, col=col)
        fig.add_annotation(
            x=current, y=1.04, xref="x", yref="y", text="your choice", showarrow=False, font=dict(color=MARK_COLOR)
        )
    fig.update_xaxes(title_text="share of neurons zeroed (most suspect first)", range=[-0.02, 1.02])
    fig.update_yaxes(range=[-0.02, 1.08], tickformat=".0%")
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


def roc_figure(curves: Sequence[tuple[str, Sequence[float], Sequence[float], float]], bold: str) -> go.Figure:
    """ROC of finding infected neurons: one (label, fpr, tpr, auc) per score, the ``bold`` label drawn thicker."""
    fig = go.Figure()
    for i, (label, fpr, tpr, auc) in enumerate(curves):
        fig.add_trace(
            go.Scatter(
                x=fpr,
                y=tpr,
                mode="lines",
                name=f"{label} (AUC {auc:.2f})",
                line=dict(color=COLORS[i % len(COLORS)], width=3 if label == bold else 2),
            )
        )
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbb", dash="dot"), name="chance"))
    fig.update_layout(
        title="finding infected neurons: ROC",
        height=420,
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis_title="share of clean neurons flagged",
        yaxis_title="share of infected neurons found",
        legend=dict(orientation="h", y=-0.2),
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
        color_discrete_map={"infected": "#d62728", "clean": "#9fb3c8"},
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
    fig.update_layout(height=420, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2))
    return fig


def runs_figure(runs: Sequence) -> go.Figure:
    """Loss, clean accuracy and ASR against the step, one colour per run (``ui.runs.Runner``).

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
