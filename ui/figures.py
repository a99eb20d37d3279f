"""Figures for the classroom: the trigger enlarged, and outlines drawn in the cells' own coordinates.

Outlines are plotly *shapes* in data coordinates (``xref``/``yref`` = the subplot's axes), not marker symbols
sized in pixels: they scale with the cells, so browser zoom, presenter mode or a narrow window never make an
outline grow past its cell.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from . import palette

OUTLINE_INSET = 0.42  # half the outline's side, in cells (0.5 would touch the neighbour)
OUTLINE_WIDTH = 2.5  # px


def outline_shapes(index: np.ndarray, cols: int, subplot: int = 1, color: str = palette.INFECTED) -> list[dict]:
    """One square outline per flat grid ``index`` (row-major, ``cols`` wide) on subplot number ``subplot``."""
    axis = "" if subplot == 1 else str(subplot)
    d = OUTLINE_INSET
    return [
        dict(
            type="rect",
            xref=f"x{axis}",
            yref=f"y{axis}",
            x0=int(i) % cols - d,
            x1=int(i) % cols + d,
            y0=int(i) // cols - d,
            y1=int(i) // cols + d,
            line=dict(color=color, width=OUTLINE_WIDTH),
            fillcolor="rgba(0,0,0,0)",
            layer="above",
            name="marked",
        )
        for i in np.asarray(index).reshape(-1)
    ]


def outlined_count(fig: go.Figure | dict) -> int:
    """How many marked outlines a figure (or its JSON) holds."""
    shapes = fig["layout"].get("shapes", []) if isinstance(fig, dict) else fig.layout.shapes
    return sum(1 for s in shapes if (s.get("name") if isinstance(s, dict) else s.name) == "marked")


def _crop_box(mask2d: np.ndarray, margin: int = 3) -> tuple[slice, slice] | None:
    """Rows/columns around a small trigger (under a quarter of the image), else None."""
    where = mask2d > 0
    if not where.any() or where.mean() >= 0.25:
        return None
    rows, cols = np.nonzero(where)
    h, w = mask2d.shape
    return (
        slice(max(0, rows.min() - margin), min(h, rows.max() + margin + 1)),
        slice(max(0, cols.min() - margin), min(w, cols.max() + margin + 1)),
    )


def trigger_panels(trigger, clean: torch.Tensor) -> list[tuple[str, np.ndarray, str, tuple[float, float]]]:
    """(title, image [H, W], colour scale, (zmin, zmax)) panels that show ``trigger`` on one clean image.

    ``clean``: one image [C, H, W], pixels in [0, 1]. Mask/pattern triggers show the mask, the pattern and,
    for a small patch, the patch region enlarged; warps show the displacement field; every trigger shows the
    clean and triggered image and their difference, amplified until its largest change is full scale.
    """
    x = clean.detach().float().cpu()
    t = trigger.apply(x.unsqueeze(0))[0].detach().cpu()
    panels = []
    mask = getattr(trigger, "mask", None)
    if mask is not None:
        m2, p2 = mask.amax(0).numpy(), trigger.pattern.amax(0).numpy()
        panels += [("mask", m2, "gray", (0, 1)), ("pattern", p2, "gray", (0, 1))]
        box = _crop_box(m2)
        if box is not None:
            panels.append(("patch,<br>enlarged", t.amax(0).numpy()[box], "gray", (0, 1)))
    flow = getattr(trigger, "flow", None)
    if flow is not None:
        h = flow.shape[0]
        shift = (trigger.strength * flow / h * (h - 1) / 2).norm(dim=-1).numpy()  # in pixels
        panels.append((f"displacement<br>(max {shift.max():.2f} px)", shift, "Blues", (0, float(shift.max()) or 1)))
    diff = (t - x).mean(0).numpy()
    peak = float(np.abs(diff).max())
    amp = 1 / peak if peak > 0 else 1.0
    panels += [
        ("clean", x.amax(0).numpy(), "gray", (0, 1)),
        ("triggered", t.amax(0).numpy(), "gray", (0, 1)),
        (f"change,<br>×{amp:.0f}", diff * amp, palette.DIFFERENCE, (-1, 1)),
    ]
    return panels


def trigger_figure(trigger, clean: torch.Tensor, height: int = 230) -> go.Figure:
    """The trigger enlarged, panel by panel (see ``trigger_panels``)."""
    panels = trigger_panels(trigger, clean)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.02)
    for i, (title, img, scale, (lo, hi)) in enumerate(panels, start=1):
        fig.add_trace(
            go.Heatmap(
                z=img,
                colorscale=scale,
                zmin=lo,
                zmax=hi,
                showscale=False,
                hovertemplate=f"{title.replace('<br>', ' ')}<br>x %{{x}}, y %{{y}}: %{{z:.3f}}<extra></extra>",
            ),
            1,
            i,
        )
        axis = "" if i == 1 else str(i)
        fig.update_yaxes(scaleanchor=f"x{axis}", autorange="reversed", row=1, col=i)
        if scale == "gray" and title in ("mask", "pattern"):  # thin frame: a black mask on white is invisible
            fig.add_shape(
                type="rect",
                xref=f"x{axis}",
                yref=f"y{axis}",
                x0=-0.5,
                x1=img.shape[1] - 0.5,
                y0=-0.5,
                y1=img.shape[0] - 0.5,
                line=dict(color=palette.AXIS, width=1),
            )
    if getattr(trigger, "flow", None) is not None:  # arrows on the displacement panel, every few pixels
        col = next(i for i, p in enumerate(panels, start=1) if p[0].startswith("displacement"))
        fig.add_trace(_flow_arrows(trigger), 1, col)
    bare = dict(showticklabels=False, showgrid=False, zeroline=False, ticks="", showline=False)
    fig.update_xaxes(**bare)
    fig.update_yaxes(**bare)
    fig.update_layout(height=height, margin=dict(l=4, r=4, t=48, b=4), showlegend=False)
    return fig


def _flow_arrows(trigger, every: int = 3) -> go.Scatter:
    """Line segments from each sampled pixel along its displacement (scaled up to be visible)."""
    flow = trigger.flow.numpy()
    h, w = flow.shape[:2]
    px = trigger.strength * flow / h * (h - 1) / 2  # pixels: grid_sample's [-1, 1] spans h - 1 pixels
    scale = (every * 0.9) / max(float(np.abs(px).max()), 1e-6)
    xs, ys = [], []
    for r in range(every // 2, h, every):
        for c in range(every // 2, w, every):
            dx, dy = px[r, c] * scale
            xs += [c, c + dx, None]
            ys += [r, r + dy, None]
    return go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=palette.TEXT, width=1.5), hoverinfo="skip")


def trigger_sizes_figure(sizes: dict[int, float], target: int, height: int = 230) -> go.Figure:
    """One bar per label: the size (mask L1) of its reversed trigger; the suspected target in the danger colour."""
    labels = list(sizes)
    fig = go.Figure(
        go.Bar(
            x=[str(k) for k in labels],
            y=[sizes[k] for k in labels],
            marker_color=[palette.INFECTED if k == target else palette.CLEAN for k in labels],
            hovertemplate="label %{x}: %{y:.1f} pixels' worth of mask<extra></extra>",
        )
    )
    fig.update_xaxes(title="label the reversed trigger sends images to", type="category")
    fig.update_yaxes(title="trigger size (mask L1)")
    fig.update_layout(height=height, margin=dict(l=6, r=6, t=10, b=6), showlegend=False)
    return fig
