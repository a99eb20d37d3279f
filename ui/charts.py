"""Plotly figures of neurons and images: per-layer heatmaps (marked neurons outlined) and image grids."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from defense.neurons import NeuronScores
from ui import palette
from ui.figures import outline_shapes

COLORS = palette.RUNS  # kept for older imports: runs take their colours from ui.palette
MARK_COLOR = palette.INFECTED
_BARE = dict(showticklabels=False, showgrid=False, zeroline=False, ticks="", showline=False)


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid holding ``n`` neurons."""
    cols = max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def _grid(values: torch.Tensor | np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.full(rows * cols, np.nan)
    out[: len(values)] = np.asarray(values, dtype=float)
    return out.reshape(rows, cols)


def scaled(scores: NeuronScores, scale: str) -> dict[str, torch.Tensor]:
    """'raw' values, or per-layer 'minmax'/'rank' importance (0 = most suspect)."""
    return scores.layers if scale == "raw" else scores.normalized(scale)


def _heatmap(
    fig: go.Figure,
    col: int,
    values: torch.Tensor,
    hover: dict[str, torch.Tensor],
    marked: torch.Tensor | None,
    colorbar: dict | None,
    height: int,
) -> list[dict]:
    """One near-square grid of neurons (neuron 0 top left) in subplot ``col``; returns the red outlines of the
    marked ones, for the caller to add in one call (``add_shape`` per neuron is quadratic: 600 took 42 s)."""
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
            colorscale=palette.HEAT,
            showscale=colorbar is not None,
            colorbar=colorbar or {},
        ),
        1,
        col,
    )
    axis = f"x{col if col > 1 else ''}"
    fig.update_xaxes(**_BARE, range=[-0.5, cols - 0.5], row=1, col=col)
    fig.update_yaxes(**_BARE, range=[rows - 0.5, -0.5], scaleanchor=axis, row=1, col=col)
    if marked is None or not marked.any():
        return []
    return outline_shapes(marked.nonzero().flatten().numpy(), cols, col)  # in the cells' coordinates: they scale


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
    k = len(panels)
    gap = 0.2 if k > 1 else 0.0  # room for each panel's colour bar between the panels
    fig = make_subplots(rows=1, cols=k, subplot_titles=[p[0] for p in panels], horizontal_spacing=gap)
    width = (1 - gap * (k - 1)) / k
    shapes = []
    for i, (_, values, bar) in enumerate(panels):
        # the bar sits just right of its own panel, inside the gap (paper coordinates: it moves with the panel)
        colorbar = dict(title=dict(text=bar, side="right"), x=i * (width + gap) + width + 0.01, len=0.85, thickness=14)
        shapes += _heatmap(fig, i + 1, values, hover, marked, colorbar, height)
    fig.update_layout(
        shapes=shapes,
        height=height,
        margin=dict(l=10, r=10, t=64, b=6),
        title=dict(text=layer, x=0, y=0.99, yanchor="top"),
    )
    fig.update_annotations(yshift=4)
    return fig


def layers_row(
    values: dict[str, torch.Tensor],
    hover: dict[str, dict[str, torch.Tensor]],
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
        # two short lines per layer: the titles fit their panels at any zoom
        subplot_titles=[f"{n.removeprefix('net.')}<br>{int(marked[n].sum())}/{len(marked[n])} marked" for n in names],
    )
    shapes = []
    for i, n in enumerate(names):
        last = i == len(names) - 1
        colorbar = dict(title=dict(text=bar, side="right"), thickness=12) if last else None
        shapes += _heatmap(fig, i + 1, values[n], hover[n], marked[n], colorbar, height)
    fig.update_traces(zmin=0, zmax=1, selector=dict(type="heatmap"))
    fig.update_layout(shapes=shapes, height=height, margin=dict(l=10, r=10, t=56, b=10))
    return fig


def image_grid(
    rows: list[tuple[str, np.ndarray, list[str]]],
    colorscale: str | list[str] = "gray",
    height_per_row: int = 150,
) -> go.Figure:
    """Rows of small images: (row label, images [N, H, W], titles); ``colorscale`` one, or one per row.

    Grey rows are pixels in [0, 1]; other rows (attributions) are each scaled to their own maximum and drawn on a
    square-root scale (an attribution map is mostly near zero: on a linear scale it looks black).
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
            # attributions: each map over its own maximum, on a square-root scale so that faint ones still show
            z, what = (
                (img, "pixel")
                if scale == "gray"
                else (np.sqrt(img / (float(np.max(img)) or 1.0)), "√(attribution / its maximum)")
            )
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
    fig.update_xaxes(**_BARE)
    fig.update_yaxes(**_BARE, autorange="reversed")
    for r in range(len(rows)):
        for c in range(n):
            k = r * n + c + 1
            fig.update_yaxes(scaleanchor=f"x{k if k > 1 else ''}", row=r + 1, col=c + 1)
    fig.update_annotations(font_size=14)
    fig.update_layout(height=height_per_row * len(rows) + 40, margin=dict(l=34, r=6, t=30, b=6))
    return fig
