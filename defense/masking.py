"""Choosing which neurons to mark, and measuring what zeroing them does.

- ``mark``: a neuron mask by ratio (per layer or global) or by a threshold on the per-layer
  normalized score;
- ``preview``: clean accuracy and ASR with the marked neurons zeroed by forward hooks, so a
  preview needs no copy of the model (``neurons.neuron_masking``; ``neurons.prune`` zeroes
  the parameters for good);
- ``pruning_curve``: the preview over a grid of ratios or score cuts, for several scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from .data import TensorData
from .metrics import evaluate
from .neurons import NeuronLayer, NeuronMask, NeuronScores, neuron_masking
from .runtime import StopCheck, check_stop


def mark(
    scores: NeuronScores, ratio: float | None = None, threshold: float | None = None, scope: str = "layer"
) -> NeuronMask:
    """Mark the most suspect neurons.

    ``ratio``: the share to mark, in each layer (scope 'layer') or over all layers on the
    per-layer rank scale (scope 'global'). ``threshold``: instead, mark every neuron whose
    per-layer min-max normalized importance (0 = most suspect, 1 = least) is ≤ threshold.
    Ties are broken by neuron order, so a ratio marks exactly round(ratio·n) neurons.
    """
    if (ratio is None) == (threshold is None):
        raise ValueError("give exactly one of ratio or threshold")
    value = ratio if ratio is not None else threshold
    if not 0 <= value <= 1:
        raise ValueError(f"{'ratio' if ratio is not None else 'threshold'} must be in [0, 1], got {value}")
    if threshold is not None:
        return {
            n: v <= threshold if threshold < 1 else torch.ones_like(v, dtype=torch.bool)
            for n, v in scores.normalized("minmax").items()
        }
    if scope == "layer":
        out = {}
        for name, s in scores.suspicion().items():
            k = int(round(ratio * len(s)))
            m = torch.zeros(len(s), dtype=torch.bool)
            m[torch.sort(s, descending=True, stable=True).indices[:k]] = True
            out[name] = m
        return out
    if scope == "global":
        ranks = scores.normalized("rank")
        names = list(ranks)
        flat = torch.cat([ranks[n] for n in names])
        k = int(round(ratio * len(flat)))
        chosen = torch.zeros(len(flat), dtype=torch.bool)
        chosen[torch.sort(flat, stable=True).indices[:k]] = True
        return dict(zip(names, chosen.split([len(ranks[n]) for n in names])))
    raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")


def preview(
    model: nn.Module, layers: dict[str, NeuronLayer], mask: NeuronMask, test: TensorData, triggered: TensorData
) -> dict[str, float]:
    """Clean accuracy and ASR with the marked neurons zeroed (the model is left as it was)."""
    with neuron_masking(layers, mask):
        return evaluate(model, test, None, 0, triggered=triggered)


def pruning_curve(
    model: nn.Module,
    layers: dict[str, NeuronLayer],
    scores: list[NeuronScores],
    test: TensorData,
    triggered: TensorData,
    ratios: Sequence[float] | None = None,
    scope: str = "layer",
    by: str = "ratio",
    should_stop: StopCheck = None,
    progress=None,
) -> pd.DataFrame:
    """Clean accuracy and ASR against the marked ratio, for each score.

    ``by='value'`` cuts by normalized score instead (``mark(threshold=...)``); the column is still 'ratio'.
    ``should_stop`` is asked before each point (raises runtime.Cancelled); ``progress(done, total)`` is told
    after each.
    """
    if by not in ("ratio", "value"):
        raise ValueError("by must be 'ratio' or 'value'")
    ratios = ratios if ratios is not None else [i / 10 for i in range(11)]
    rows = []
    for s in scores:
        for r in ratios:
            check_stop(should_stop)
            mask = mark(s, ratio=r, scope=scope) if by == "ratio" else mark(s, threshold=r)
            rows.append({"metric": s.metric, "ratio": r, **preview(model, layers, mask, test, triggered)})
            if progress is not None:
                progress(len(rows), len(scores) * len(ratios))
    return pd.DataFrame(rows)
