"""The one plotly look of the app: dark text of at least 14 px, tight margins, and 2× PNG downloads.

``style(fig)`` applies the template (and, in presenter mode, larger text and a taller figure); ``plot`` is
the app's only way to put a figure on a page: the template, no Streamlit theme on top (it would bring back its
grey 12 px text), and the modebar's camera button set to a PNG at twice the size, named after the chart.
"""

from __future__ import annotations

import re

import plotly.graph_objects as go
import plotly.io as pio

from . import palette

BASE_FONT = 16  # px: body text of charts
MIN_FONT = 14  # px: the smallest text on any chart (ticks, legends, image titles)
PRESENTER_SCALE = 1.3  # presenter mode: text and figure height
EXPORT_SCALE = 2  # PNG downloads at twice the on-screen size


def template(scale: float = 1.0) -> go.layout.Template:
    size, small = round(BASE_FONT * scale), round(MIN_FONT * scale)
    axis = dict(
        tickfont=dict(size=small, color=palette.TEXT),
        title=dict(font=dict(size=small, color=palette.MUTED_TEXT)),
        gridcolor=palette.GRID,
        linecolor=palette.AXIS,
        zerolinecolor=palette.GRID,
        automargin=True,
    )
    return go.layout.Template(
        layout=dict(
            font=dict(family="Source Sans Pro, Arial, sans-serif", size=size, color=palette.TEXT),
            title=dict(font=dict(size=size + 2, color=palette.TEXT), x=0, xanchor="left"),
            legend=dict(font=dict(size=small, color=palette.TEXT)),
            annotationdefaults=dict(font=dict(size=small, color=palette.TEXT)),
            hoverlabel=dict(font=dict(size=small)),
            paper_bgcolor="#ffffff",
            plot_bgcolor="#ffffff",
            xaxis=axis,
            yaxis=axis,
            colorway=list(palette.RUNS),
        )
    )


pio.templates["bnl"] = template()
pio.templates["bnl-presenter"] = template(PRESENTER_SCALE)


def style(fig: go.Figure, presenter: bool = False) -> go.Figure:
    """``fig`` in the app's template; every annotation (subplot titles too) and colour bar at least 14 px."""
    scale = PRESENTER_SCALE if presenter else 1.0
    fig.update_layout(template="bnl-presenter" if presenter else "bnl")
    small = round(MIN_FONT * scale)
    for ann in fig.layout.annotations or ():
        size = ann.font.size if ann.font and ann.font.size else small
        ann.font.size = max(size, MIN_FONT) * scale if presenter else max(size, MIN_FONT)
        if not ann.font.color:
            ann.font.color = palette.TEXT
    for trace in fig.data:
        bar = getattr(trace, "colorbar", None)
        if bar is not None and getattr(trace, "showscale", None) is not False:
            bar.tickfont = dict(size=small, color=palette.TEXT)
            bar.title.font = dict(size=small, color=palette.TEXT)
    if presenter and fig.layout.height:
        fig.update_layout(height=round(fig.layout.height * scale))
    return fig


def filename(name: str) -> str:
    """A file-system-safe download name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "chart"


def chart_config(name: str) -> dict:
    """plotly's ``config`` for a chart: its camera button downloads ``name``.png at 2× scale."""
    return {
        "displaylogo": False,
        "toImageButtonOptions": {"format": "png", "scale": EXPORT_SCALE, "filename": filename(name)},
        "modeBarButtonsToRemove": ["lasso2d", "select2d"],
    }


def plot(fig: go.Figure, key: str, name: str | None = None) -> None:
    """Put ``fig`` on the page in the app's style; its download is ``name`` (default: ``key``) at 2×."""
    import streamlit as st

    style(fig, bool(st.session_state.get("presenter")))
    st.plotly_chart(fig, width="stretch", key=key, theme=None, config=chart_config(name or key))
