"""Every purification defense, as an entry of ``registry.DEFENSES`` that builds a Purification run.

- ``bs-ar``, ``bs-l1``, ``bs-l2``, ``bs-prune``: benign salience marks neurons, then each regularizer;
- ``mag-ar``: adaptive regularization on neurons marked by weight magnitude instead (isolates
  what benign salience adds);
- ``ft``: plain fine-tuning on the clean data (no marking, plain cross-entropy);
- ``ft-kd``: fine-tuning with the same self-distillation our defaults use, no marking;
- ``fp``: Fine-Pruning (Liu et al. 2018): prune the last conv layer's channels in increasing
  order of mean clean activation, as far as the defender's clean accuracy stays within
  ``max_drop`` of the start, then fine-tune;
- ``clp``: Channel Lipschitzness-based Pruning (Zheng et al. 2022), data-free: prune every
  channel whose Lipschitz bound exceeds mean + u·std of its layer (u = 3); no fine-tuning.
Written from their published descriptions. A marking defense (``marking=(score, regularizer)``)
can also take a mask chosen elsewhere (the app's Threshold page).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from .data import TensorData
from .masking import preview
from .metrics import accuracy
from .neurons import NeuronMask, NeuronScores, neuron_map
from .purify import Purification, PurifyConfig
from .registry import DEFENSES, Defense
from .scores.activation import activation
from .scores.clp import clp


def fine_pruning_mask(model: nn.Module, clean: TensorData, max_drop: float = 0.05, step: float = 0.05) -> NeuronMask:
    """FP's mask: lowest-activation channels of the last conv layer, as many as clean accuracy allows."""
    layers = neuron_map(model)
    convs = [n for n, nl in layers.items() if isinstance(nl.layer, nn.Conv2d)]
    last = convs[-1]
    act = activation(model, clean, {last: layers[last]}).layers[last]
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


def clp_mask(model: nn.Module, u: float = 3.0) -> NeuronMask:
    """CLP's mask: channels whose Lipschitz bound is above mean + u·std within their conv layer."""
    layers = neuron_map(model)
    scores = clp(model, layers).layers
    mask = {}
    for n, nl in layers.items():
        s = scores[n]
        mask[n] = (
            (s > s.mean() + u * s.std()) if isinstance(nl.layer, nn.Conv2d) else torch.zeros(len(s), dtype=torch.bool)
        )
    return mask


def marking_build(score: str, reg: str) -> Callable[..., Purification]:
    """The build of a defense that marks neurons with ``score`` and applies regularizer ``reg``."""

    def build(
        model: nn.Module,
        clean: TensorData,
        test: TensorData,
        triggered: TensorData,
        config: PurifyConfig,
        scores: NeuronScores | None = None,
        mask: NeuronMask | None = None,
    ) -> Purification:
        cfg = replace(config, metric=score, reg=reg)
        reuse = scores if scores is not None and scores.metric == score else None  # precomputed on this model
        return Purification(model, clean, test, triggered, cfg, scores=reuse, mask=mask)

    return build


def _register_marking(name: str, score: str, reg: str, label: str, explanation: str, **flags) -> None:
    DEFENSES.register(
        Defense(name, label, explanation, marking_build(score, reg), marking=(score, reg), distill=True, **flags)
    )


_SHARED = (
    "then fine-tunes a copy of the model on the defender's clean images with self-distillation from the "
    "original model (the recommended settings of docs/METHOD.md)"
)
_register_marking(
    "bs-ar",
    "benign",
    "ar",
    "benign salience + adaptive regularization (this paper)",
    "Marks the neurons with the lowest benign salience in each layer, " + _SHARED + ", with the adaptive "
    "regularization penalty on the marked neurons' weights: linear for small weights and growing exponentially "
    "beyond a knee scaled to each tensor. It differs from the paper's own recipe in the scale-aware knee and "
    "the distillation.",
    recommended=True,
)
_register_marking(
    "bs-l1",
    "benign",
    "l1",
    "benign salience + L1 penalty",
    "Marks the lowest-benign-salience neurons like bs-ar, " + _SHARED + ", with a plain L1 penalty (sum of "
    "absolute values) on the marked weights instead of adaptive regularization.",
)
_register_marking(
    "bs-l2",
    "benign",
    "l2",
    "benign salience + L2 penalty",
    "Marks the lowest-benign-salience neurons like bs-ar, " + _SHARED + ", with a plain L2 penalty (sum of "
    "squares) on the marked weights instead of adaptive regularization.",
)
_register_marking(
    "bs-prune",
    "benign",
    "prune",
    "benign salience + prune, then fine-tune",
    "Zeroes the lowest-benign-salience neurons outright, " + _SHARED + ", holding the zeroed weights at zero.",
)
_register_marking(
    "mag-ar",
    "magnitude",
    "ar",
    "weight magnitude + adaptive regularization",
    "Marks the neurons with the smallest weights instead of the lowest benign salience, " + _SHARED + ", with "
    "adaptive regularization: it shows what benign salience adds over the usual pruning criterion.",
)


def _ft(model, clean, test, triggered, config, scores=None, mask=None) -> Purification:
    return Purification(model, clean, test, triggered, replace(config, reg="none", distill=0.0))


def _ft_kd(model, clean, test, triggered, config, scores=None, mask=None) -> Purification:
    return Purification(model, clean, test, triggered, replace(config, reg="none"))


def _fp(model, clean, test, triggered, config, scores=None, mask=None) -> Purification:
    # published form: plain cross-entropy fine-tuning after pruning
    cfg = replace(config, metric="activation", reg="prune", distill=0.0)
    return Purification(model, clean, test, triggered, cfg, mask=fine_pruning_mask(model, clean))


def _clp(model, clean, test, triggered, config, scores=None, mask=None) -> Purification:
    cfg = replace(config, metric="clp", reg="prune", steps=0)
    return Purification(model, clean, test, triggered, cfg, mask=clp_mask(model))


DEFENSES.register(
    Defense(
        "ft",
        "fine-tuning (FT), plain cross-entropy",
        "Fine-tunes a copy of the model on the defender's clean images with plain cross-entropy, marking "
        "nothing: the simplest baseline, which a backdoor often survives.",
        _ft,
    )
)
DEFENSES.register(
    Defense(
        "ft-kd",
        "fine-tuning with the same distillation as bs-ar (isolates what marking + AR add)",
        "Fine-tunes a copy of the model on the defender's clean images with the same self-distillation from the "
        "original model that bs-ar uses, but marks and penalizes nothing.",
        _ft_kd,
        distill=True,
    )
)
DEFENSES.register(
    Defense(
        "fp",
        "Fine-Pruning (FP)",
        "Fine-Pruning: prunes the channels of the last convolutional layer that fire least on the clean images, "
        "as many as keep the clean accuracy within 5 points, then fine-tunes with plain cross-entropy.",
        _fp,
    )
)
DEFENSES.register(
    Defense(
        "clp",
        "Channel Lipschitz pruning (CLP, data-free)",
        "Channel Lipschitzness-based Pruning: zeroes every convolutional channel whose Lipschitz bound is more "
        "than three standard deviations above its layer's mean, from the weights alone; no data, no fine-tuning.",
        _clp,
        needs=frozenset(),
    )
)


def recommended() -> Defense:
    """What ``purify`` runs with no options."""
    return next(d for d in DEFENSES if d.recommended)


def make(
    name: str,
    model: nn.Module,
    clean: TensorData,
    test: TensorData,
    triggered: TensorData,
    config: PurifyConfig | None = None,
    scores: NeuronScores | None = None,
    mask: NeuronMask | None = None,
) -> Purification:
    """A ready-to-run Purification for defense ``name`` (settings from ``config`` where they apply).

    ``scores``: precomputed scores of the original model, reused when they are the defense's marking score;
    ``mask``: a mask chosen elsewhere, for marking defenses only (it replaces the ratio).
    """
    if name not in DEFENSES:
        raise ValueError(f"unknown defense '{name}': expected one of {', '.join(DEFENSES.names())}")
    defense = DEFENSES[name]
    if mask is not None and defense.marking is None:
        raise ValueError(f"defense '{name}' marks no neurons, so it cannot take a mask")
    base = config if config is not None else PurifyConfig()
    return defense.build(model, clean, test, triggered, base, scores, mask)
