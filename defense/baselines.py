"""Baseline defenses, written from their published descriptions, as Purification runs.

- ``ft``: plain fine-tuning on the clean data (no marking, plain cross-entropy).
- ``ft-kd``: fine-tuning with the same self-distillation our defaults use, no marking.
- ``fp``: Fine-Pruning (Liu et al. 2018): prune the last conv layer's channels in
  increasing order of mean clean activation, as far as the defender's clean accuracy
  stays within ``max_drop`` of the start, then fine-tune.
- ``clp``: Channel Lipschitzness-based Pruning (Zheng et al. 2022), data-free: prune
  every channel whose Lipschitz bound exceeds mean + u·std of its layer (u = 3); no
  fine-tuning.
- ``mag-ar``: the paper's Adaptive Regularization on neurons marked by weight magnitude
  instead of benign salience (isolates what benign salience adds).
- ``bs-ar``, ``bs-l1``, ``bs-l2``, ``bs-prune``: benign salience with each regularizer.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from . import salience
from .data import TensorData
from .metrics import accuracy
from .purify import Purification, PurifyConfig, preview

DEFENSES = {
    "bs-ar": "benign salience + adaptive regularization (this paper)",
    "bs-l1": "benign salience + L1 penalty",
    "bs-l2": "benign salience + L2 penalty",
    "bs-prune": "benign salience + prune, then fine-tune",
    "mag-ar": "weight magnitude + adaptive regularization",
    "ft": "fine-tuning (FT), plain cross-entropy",
    "ft-kd": "fine-tuning with the same distillation as bs-ar (isolates what marking + AR add)",
    "fp": "Fine-Pruning (FP)",
    "clp": "Channel Lipschitz pruning (CLP, data-free)",
}


def fine_pruning_mask(model: nn.Module, clean: TensorData, max_drop: float = 0.05, step: float = 0.05):
    """FP's mask: lowest-activation channels of the last conv layer, as many as clean accuracy allows."""
    layers = salience.neuron_map(model)
    convs = [n for n, nl in layers.items() if isinstance(nl.layer, nn.Conv2d)]
    last = convs[-1]
    act = salience.activation(model, clean, {last: layers[last]}).layers[last]
    order = act.argsort()
    base = accuracy(model, clean)
    mask = {n: torch.zeros(nl.size, dtype=torch.bool) for n, nl in layers.items()}
    ratio = step
    while ratio < 1:
        trial = torch.zeros(layers[last].size, dtype=torch.bool)
        trial[order[: int(round(ratio * len(order)))]] = True
        acc = preview(model, layers, {last: trial}, clean, TensorData(clean.x[:0], clean.y[:0]))["clean_acc"]
        if base - acc > max_drop:
            break
        mask[last] = trial
        ratio += step
    return mask


def clp_mask(model: nn.Module, u: float = 3.0):
    """CLP's mask: channels whose Lipschitz bound is above mean + u·std within their conv layer."""
    layers = salience.neuron_map(model)
    scores = salience.clp(model, layers).layers
    mask = {}
    for n, nl in layers.items():
        s = scores[n]
        mask[n] = (
            (s > s.mean() + u * s.std()) if isinstance(nl.layer, nn.Conv2d) else torch.zeros(len(s), dtype=torch.bool)
        )
    return mask


def make(
    name: str,
    model: nn.Module,
    clean: TensorData,
    test: TensorData,
    triggered: TensorData,
    config: PurifyConfig | None = None,
    scores=None,
) -> Purification:
    """A ready-to-run Purification for defense ``name`` (settings from ``config`` where they apply)."""
    base = config if config is not None else PurifyConfig()
    if name not in DEFENSES:
        raise ValueError(f"unknown defense '{name}': expected one of {', '.join(DEFENSES)}")
    if name.startswith("bs-"):
        cfg = replace(base, metric="benign", reg=name[3:])
        return Purification(
            model,
            clean,
            test,
            triggered,
            cfg,
            scores=scores if scores is not None and scores.metric == "benign" else None,
        )
    if name == "mag-ar":
        return Purification(model, clean, test, triggered, replace(base, metric="magnitude", reg="ar"))
    if name == "ft":
        return Purification(model, clean, test, triggered, replace(base, reg="none", distill=0.0))
    if name == "ft-kd":
        return Purification(model, clean, test, triggered, replace(base, reg="none"))
    if name == "fp":  # published form: plain cross-entropy fine-tuning after pruning
        return Purification(
            model,
            clean,
            test,
            triggered,
            replace(base, metric="activation", reg="prune", distill=0.0),
            mask=fine_pruning_mask(model, clean),
        )
    return Purification(
        model, clean, test, triggered, replace(base, metric="clp", reg="prune", steps=0), mask=clp_mask(model)
    )
