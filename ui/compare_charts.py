"""Plotly figures of a comparison: ASR against accuracy lost (with the Pareto front), and every run's ASR curve.

No Streamlit here: the Compare page and the offline HTML report (defense/report_html.py) draw the same figures.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from ui.charts import COLORS

ASR_GOAL = 0.05
PAPER_COLOR = "#d62728"


SYMBOLS = ("circle", "diamond", "square")  # the scatter's marker per round of the palette, as dashes are the curves'


def defense_colors(names: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, dash) per defense, in the given order: the palette once solid, then dashed."""
    return {n: (COLORS[i % len(COLORS)], "solid" if i < len(COLORS) else "dash") for i, n in enumerate(names)}


def defense_symbols(names: list[str]) -> dict[str, str]:
    """A marker per defense: with the colour, no two of up to 3 rounds of the palette look alike."""
    return {n: SYMBOLS[(i // len(COLORS)) % len(SYMBOLS)] for i, n in enumerate(names)}


# a name written beside its point takes about this share of the plot's width and height (9 characters at 12 px
# on a full-width chart at 1280 px); names closer than that to one already written are left to the legend
LABEL_WIDTH, LABEL_HEIGHT = 0.09, 0.08


def labelled(board: pd.DataFrame, width: float = LABEL_WIDTH, height: float = LABEL_HEIGHT) -> list[str]:
    """The defenses whose names are written beside their points, so that no two names land on each other.

    The paper's method, the recommended defense and the Pareto front are placed first, then the rest by how far
    they sit from the others; a name is written only where it keeps ``width`` × ``height`` (in shares of the
    axes' spans) clear of every name already written. The others are named in the legend and on hover.
    """
    if board.empty:
        return []
    x, y = board.acc_lost.astype(float), board.asr.astype(float)
    span_x = max(x.max() - min(x.min(), 0.0), 1e-9)
    span_y = max(y.max() - min(y.min(), 0.0), 1e-9)
    px, py = x / span_x, y / span_y
    crowd = [int(((abs(px - a) < width) & (abs(py - b) < height)).sum()) for a, b in zip(px, py)]
    first = board.paper.astype(int) * 4 + board.recommended.astype(int) * 2 + board.pareto.astype(int)
    order = sorted(range(len(board)), key=lambda i: (-int(first.iloc[i]), crowd[i], i))
    shown: list[int] = []
    for i in order:
        if all(abs(px.iloc[i] - px.iloc[j]) >= width or abs(py.iloc[i] - py.iloc[j]) >= height for j in shown):
            shown.append(i)
    return [board.defense.iloc[i] for i in sorted(shown)]


def tradeoff_figure(board: pd.DataFrame, height: int = 420) -> go.Figure:
    """One point per defense: ASR after against accuracy lost (error bars: half-range over seeds).

    The Pareto front (no other defense lower on both) is drawn as a line; the paper's method is a star. Names are
    written beside the points where they do not collide (``labelled``); every point is in the legend and on hover.
    """
    fig = go.Figure()
    if board.empty:
        return fig
    colors = defense_colors(board.defense.tolist())
    symbols = defense_symbols(board.defense.tolist())
    named = set(labelled(board))
    front = board[board.pareto].sort_values("acc_lost")
    if len(front):
        fig.add_trace(
            go.Scatter(
                x=100 * front.acc_lost,
                y=front.asr,
                mode="lines",
                line=dict(color="#888", dash="dot", shape="hv"),
                name="Pareto front",
                hoverinfo="skip",
            )
        )
    for row in board.itertuples():
        paper = bool(row.paper)
        fig.add_trace(
            go.Scatter(
                x=[100 * row.acc_lost],
                y=[row.asr],
                mode="markers+text" if row.defense in named else "markers",
                text=[row.defense] if row.defense in named else None,
                textposition="top center",
                name=row.defense + (" (paper)" if paper else ""),
                marker=dict(
                    size=18 if paper else 11,
                    symbol="star" if paper else symbols[row.defense],
                    color=PAPER_COLOR if paper else colors[row.defense][0],
                    line=dict(width=1.5 if row.pareto else 0, color="#222"),
                ),
                error_x=dict(type="data", array=[100 * row.acc_lost_spread], visible=row.seeds > 1, thickness=1.2),
                error_y=dict(type="data", array=[row.asr_spread], visible=row.seeds > 1, thickness=1.2),
                hovertemplate=(
                    f"<b>{row.defense}</b><br>{row.label}<br>ASR %{{y:.1%}}<br>accuracy lost %{{x:.1f}} points"
                    f"<br>{row.seeds} seed(s)<extra></extra>"
                ),
            )
        )
    goal = dict(color="#2ca02c", dash="dash", width=1)
    fig.add_hline(y=ASR_GOAL, line=goal)
    # named in the legend, not on the chart, where the points near ASR 0 sit under any label
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=goal, name="goal: ASR 5%", hoverinfo="skip"))
    fig.update_xaxes(title_text="clean accuracy lost (points; left is better)", tickformat=".1f", zeroline=True)
    # room above the highest point for its name and error bar (autorange leaves text out)
    top = float((board.asr + board.asr_spread.fillna(0)).max())
    fig.update_yaxes(
        title_text="ASR after (lower is better)",
        tickformat=".0%",
        range=[-0.02, max(top, 0.05) * 1.15 + 0.02],
    )
    fig.update_layout(
        title="attack success against accuracy lost: one point per defense",
        height=height,
        margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="h", y=-0.3),  # below the x axis's title
    )
    return fig


def asr_curves_figure(results: dict, order: list[str], height: int = 380) -> go.Figure:
    """ASR against the step for every run (one colour per defense, a line per seed); the 5% goal dotted."""
    fig = go.Figure()
    colors = defense_colors(order)
    shown = set()
    runs = sorted(
        results.values(), key=lambda r: (order.index(r["defense"]) if r["defense"] in order else 99, r["seed"])
    )
    for r in runs:
        hist = r.get("history") or []
        if not hist:
            continue
        name = r["defense"]
        color, dash = colors.get(name, ("#555", "solid"))
        fig.add_trace(
            go.Scatter(
                x=[h["step"] for h in hist],
                y=[h["asr"] for h in hist],
                mode="lines+markers" if len(hist) < 4 else "lines",
                name=name,
                legendgroup=name,
                showlegend=name not in shown,
                line=dict(color=color, dash=dash, width=3 if r.get("paper") else 2),
                hovertemplate=f"{name} (seed {r['seed']})<br>step %{{x}}: ASR %{{y:.1%}}<extra></extra>",
            )
        )
        shown.add(name)
    fig.add_hline(y=ASR_GOAL, line=dict(color="#2ca02c", dash="dot", width=1))
    fig.update_xaxes(title_text="fine-tuning step")
    fig.update_yaxes(title_text="attack success rate", tickformat=".0%", range=[-0.02, 1.04])
    fig.update_layout(
        title="attack success during every run",
        height=height,
        margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


def table_rows(board: pd.DataFrame) -> list[dict]:
    """The leaderboard as display rows (percentages; ± half-range over seeds when there are several)."""
    rows = []
    for r in board.itertuples():
        rows.append(
            {
                "defense": r.defense + (" ★ paper" if r.paper else "") + (" (recommended)" if r.recommended else ""),
                "clean accuracy after": 100 * r.clean_acc,
                "ASR after": 100 * r.asr,
                "accuracy lost (points)": 100 * r.acc_lost,
                "steps to ASR ≤ 5%, accuracy kept": None if pd.isna(r.steps_to_goal) else float(r.steps_to_goal),
                "seconds": float(r.seconds),
                "seeds": int(r.seeds),
                "± ASR": 100 * r.asr_spread,
                "± accuracy lost": 100 * r.acc_lost_spread,
                "on Pareto front": bool(r.pareto),
                "status": r.status,
            }
        )
    return rows
