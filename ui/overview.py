"""Views for networks with many layers: one overview row per layer, heatmaps only for the layers asked for."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

MANY_LAYERS = 6  # above this, the Salience and Threshold pages open on the overview instead of every heatmap
MAX_HEATMAPS = 6  # layers side by side on the Threshold page: more and each panel is a few pixels wide


def layer_overview(values: dict[str, torch.Tensor], marked: dict[str, torch.Tensor], score: str) -> go.Figure:
    """One horizontal row per layer: the distribution of its neurons' (per-layer scaled) scores, marked in red.

    A box per layer (quartiles, whiskers) over the neurons as points; 0 = the layer's most suspect neuron.
    """
    fig = go.Figure()
    names = list(values)
    for name in names:
        v, m = values[name].float(), marked[name]
        label = f"{name} ({int(m.sum())}/{len(m)})"
        fig.add_trace(
            go.Box(
                x=v.numpy(),
                name=label,
                orientation="h",
                boxpoints=False,
                marker_color="#1f77b4",
                line_width=1,
                showlegend=False,
                hoverinfo="skip",
            )
        )
        if m.any():
            fig.add_trace(
                go.Scatter(
                    x=v[m].numpy(),
                    y=[label] * int(m.sum()),
                    mode="markers",
                    marker=dict(color="#d62728", size=5, symbol="line-ns-open"),
                    name="marked",
                    showlegend=False,
                    hovertemplate="%{x:.3f}<extra>marked</extra>",
                )
            )
    fig.update_layout(
        height=max(320, 26 * len(names) + 80),
        margin=dict(l=10, r=10, t=40, b=40),
        title=dict(text=f"{score}, every layer (neurons marked / in layer)", x=0, font=dict(size=15)),
        xaxis_title="per-layer scale: 0 = most suspect, 1 = most important",
        yaxis=dict(autorange="reversed", tickfont=dict(size=11)),
    )
    return fig


def layers_to_draw(
    layers: list[str],
    values: dict[str, torch.Tensor],
    marked: dict[str, torch.Tensor],
    score: str,
    chart_key: str,
    download_name: str,
    widget_key: str,
    max_selections: int | None = None,
) -> list[str]:
    """The layers a page draws heatmaps of: all of a shallow network's; for a deep one, the overview of every
    layer on the page, then the layers picked in a multiselect (the last layer at first)."""
    import streamlit as st

    from ui.theme import plot

    if len(layers) <= MANY_LAYERS:
        return list(layers)
    plot(layer_overview(values, marked, score), chart_key, download_name)
    most = f"up to {max_selections}" if max_selections else "the layers"
    return st.multiselect(
        "Heatmaps of these layers",
        list(layers),
        default=list(layers)[-1:],
        max_selections=max_selections,
        key=widget_key,
        help=f"{len(layers)} layers, {sum(len(v) for v in values.values()):,} neurons: pick {most} to look at "
        "neuron by neuron",
    )
