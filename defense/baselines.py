"""Every purification defense, as an entry of ``registry.DEFENSES`` that builds a Purification run.

- ``nc-ar`` (recommended: what ``purify`` runs with no options; docs/METHOD.md says why): the trigger
  reverse-engineered from the clean images (Neural Cleanse) marks the neurons that carry it, then adaptive
  regularization with self-distillation while part of each batch carries the reversed trigger at its true label;
- ``clp-ar``: CLP's channel Lipschitz bound marks neurons, then adaptive regularization with
  self-distillation (the recommended defense until 2026-12-07: instant to start, no reversal);
- ``bs-ar``: the paper's method as published: benign salience marks neurons, adaptive
  regularization with the reference knee (1), plain cross-entropy, no distillation (``paper=True``);
- ``bs-ar-kd``: our variant: the same marking, a knee at half each tensor's RMS, λ 0.3 and self-distillation
  from the original model;
- ``bs-l1``, ``bs-l2``, ``bs-prune``: benign salience with each other regularizer (with distillation; L1 and L2
  at bs-ar-kd's λ);
- ``mag-ar`` / ``mag-ar-kd``: adaptive regularization on neurons marked by weight magnitude instead
  (isolates what benign salience adds), without and with distillation (each with its BS twin's settings);
- ``ft`` / ``ft-kd``: fine-tuning on the clean data, no marking, without and with distillation;
- ``fp`` / ``fp-kd``: Fine-Pruning (Liu et al. 2018): prune the last conv layer's channels in increasing
  order of mean clean activation, as far as the defender's clean accuracy stays within
  ``max_drop`` of the start, then fine-tune (published: plain cross-entropy; -kd: with distillation);
- ``anp``: Adversarial Neuron Pruning (Wu & Wang 2021), published settings (``anp_prune.py``);
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


def apply_defaults(config: PurifyConfig, defaults: dict) -> PurifyConfig:
    """``config`` with a defense's own ``defaults`` for the settings it left at PurifyConfig's values."""
    base = PurifyConfig()
    return replace(config, **{k: v for k, v in defaults.items() if getattr(config, k) == getattr(base, k)})


def settings_for(name: str, config: PurifyConfig) -> PurifyConfig:
    """The settings defense ``name`` runs with when given ``config`` (what a page should say it marks)."""
    return apply_defaults(config, DEFENSES[name].defaults)


def marking_build(score: str, reg: str, defaults=None, **overrides) -> Callable[..., Purification]:
    """The build of a defense that marks neurons with ``score`` and applies regularizer ``reg``.

    ``overrides``: settings the defense fixes whatever the config says (e.g. ``distill=0.0`` for the paper's form).
    ``defaults``: the defense's own values of settings the caller left at PurifyConfig's default (a ``--ratio``
    given on the command line still wins).
    """
    own_defaults = dict(defaults or {})

    def build(
        model: nn.Module,
        clean: TensorData,
        test: TensorData,
        triggered: TensorData,
        config: PurifyConfig,
        scores: NeuronScores | None = None,
        mask: NeuronMask | None = None,
    ) -> Purification:
        cfg = replace(apply_defaults(config, own_defaults), metric=score, reg=reg, **overrides)
        reuse = scores if scores is not None and scores.metric == score else None  # precomputed on this model
        return Purification(model, clean, test, triggered, cfg, scores=reuse, mask=mask)

    return build


def _register_marking(
    name: str,
    score: str,
    reg: str,
    label: str,
    explanation: str,
    distill: bool = True,
    overrides=None,
    defaults=None,
    **flags,
) -> None:
    overrides = dict(overrides or {})
    if not distill:
        overrides["distill"] = 0.0
    DEFENSES.register(
        Defense(
            name,
            label,
            explanation,
            marking_build(score, reg, defaults, **overrides),
            marking=(score, reg),
            distill=distill,
            defaults=dict(defaults or {}),
            **flags,
        )
    )


# bs-ar-kd's AR, and its siblings' strength: chosen by bench/regularizers.py on the bundled models and checked on
# the unseen-trigger models (docs/METHOD.md, "AR against L1 and L2"); the other AR defenses keep λ 0.03, knee 2×RMS
STRONG_AR = {"lam": 0.3, "knee_scale": 0.5}
SIBLING_STRENGTH = {"lam": 0.3}

_SHARED = (
    "then fine-tunes a copy of the model on the defender's clean images with self-distillation from the "
    "original model (our addition, docs/METHOD.md)"
)
_PLAIN = "then fine-tunes a copy of the model on the defender's clean images with plain cross-entropy"
# Pairs: each marking defense is offered without distillation (the published form) and with it ("-kd", ours),
# so that a class can see what each part adds; ft / ft-kd and fp / fp-kd are the matching baseline pairs.
_register_marking(
    "clp-ar",
    "clp",
    "ar",
    "CLP marking + adaptive regularization",
    "Marks, in each layer, the 40% of the neurons with the highest channel Lipschitz bound (CLP's score, read "
    "from the weights: backdoor channels amplify their input unusually strongly), " + _SHARED + ", with the "
    "paper's adaptive regularization on the marked neurons. Benign salience ranks the infected neurons of the "
    "bundled models near chance; CLP ranks them better and needs no data, so it starts at once (docs/METHOD.md).",
)
_register_marking(
    "bs-ar",
    "benign",
    "ar",
    "benign salience + adaptive regularization (the paper, as published)",
    "The paper's method as published: marks the neurons with the lowest benign salience in each layer, "
    + _PLAIN
    + ", with the adaptive regularization penalty on the marked weights (|w| up to the knee of 1, exponential "
    "beyond). No distillation, and the reference code's fixed knee of 1.",
    distill=False,
    overrides={"knee": "reference"},
    paper=True,
)
_register_marking(
    "bs-ar-kd",
    "benign",
    "ar",
    "benign salience + AR + self-distillation (ours)",
    "Our variant of the paper's method: marks the lowest-benign-salience neurons like bs-ar, "
    + _SHARED
    + ", with adaptive regularization whose knee sits at half the RMS of each tensor's weights, at a strength "
    "(λ 0.3) ten times the other AR defenses'. It differs from the paper's recipe in the knee, the strength and "
    "the distillation; with them AR reaches ASR ≤ 5% in fewer steps than L1 or L2 at the same λ on the same "
    "neurons, though an L1 made as strong (λ 1) is as fast (docs/METHOD.md, 'AR against L1 and L2').",
    defaults=STRONG_AR,
)
_register_marking(
    "bs-l1",
    "benign",
    "l1",
    "benign salience + L1 penalty, with distillation",
    "Marks the lowest-benign-salience neurons like bs-ar, " + _SHARED + ", with a plain L1 penalty (sum of "
    "absolute values) on the marked weights instead of adaptive regularization, at bs-ar-kd's strength (λ 0.3).",
    defaults=SIBLING_STRENGTH,
)
_register_marking(
    "bs-l2",
    "benign",
    "l2",
    "benign salience + L2 penalty, with distillation",
    "Marks the lowest-benign-salience neurons like bs-ar, " + _SHARED + ", with a plain L2 penalty (sum of "
    "squares) on the marked weights instead of adaptive regularization, at bs-ar-kd's strength (λ 0.3).",
    defaults=SIBLING_STRENGTH,
)
_register_marking(
    "bs-prune",
    "benign",
    "prune",
    "benign salience + prune, then fine-tune with distillation",
    "Zeroes the lowest-benign-salience neurons outright, " + _SHARED + ", holding the zeroed weights at zero.",
)
_register_marking(
    "mag-ar",
    "magnitude",
    "ar",
    "weight magnitude + adaptive regularization, no distillation",
    "Marks the neurons with the smallest weights instead of the lowest benign salience, " + _PLAIN + ", with "
    "adaptive regularization: beside bs-ar it shows what benign salience adds over the usual pruning criterion.",
    distill=False,
)
_register_marking(
    "mag-ar-kd",
    "magnitude",
    "ar",
    "weight magnitude + adaptive regularization, with distillation",
    "Marks the neurons with the smallest weights, " + _SHARED + ", with adaptive regularization at bs-ar-kd's "
    "settings: the pair of bs-ar-kd with weight magnitude in place of benign salience.",
    defaults=STRONG_AR,
)

_register_marking(
    "nc-ar",
    "inversion",
    "ar",
    "reversed-trigger marking + AR + unlearning of the reversed trigger (recommended)",
    "Reverse-engineers the trigger from the clean images (Neural Cleanse) and marks, in each layer, the 10% of the "
    "neurons whose removal most weakens it (the inversion score), "
    + _SHARED
    + ", with adaptive regularization on the marked neurons, in batches of up to 200 images (the whole clean "
    "subset at 5% of the digits); 40% of every batch carries one of the three smallest reversed triggers at its "
    "true label, so that the backdoor cannot grow back elsewhere, even when the reversal suspected the wrong label. "
    "Of the defenses here it removes the attack with the least clean accuracy lost, on the bundled models and on "
    "triggers the settings were not chosen on. Slower to start: the reversal takes an optimisation per label "
    "(docs/METHOD.md).",
    overrides={"reversed_share": 0.4},
    # large batches keep BatchNorm's batch statistics steady; three triggers cover a wrong first suspect (METHOD.md)
    defaults={"ratio": 0.1, "batch_size": 200, "reversed_count": 3},
    recommended=True,
)


def _ft(model, clean, test, triggered, config, scores=None, mask=None) -> Purification:
    return Purification(model, clean, test, triggered, replace(config, reg="none", distill=0.0))


def _ft_kd(model, clean, test, triggered, config, scores=None, mask=None) -> Purification:
    return Purification(model, clean, test, triggered, replace(config, reg="none"))


def _fp(model, clean, test, triggered, config, scores=None, mask=None) -> Purification:
    # published form: plain cross-entropy fine-tuning after pruning
    cfg = replace(config, metric="activation", reg="prune", distill=0.0)
    return Purification(model, clean, test, triggered, cfg, mask=fine_pruning_mask(model, clean))


def _fp_kd(model, clean, test, triggered, config, scores=None, mask=None) -> Purification:
    cfg = replace(config, metric="activation", reg="prune")  # FP's pruning, then fine-tuning with distillation
    return Purification(model, clean, test, triggered, cfg, mask=fine_pruning_mask(model, clean))


def _clp(model, clean, test, triggered, config, scores=None, mask=None) -> Purification:
    cfg = replace(config, metric="clp", reg="prune", steps=0)
    return Purification(model, clean, test, triggered, cfg, mask=clp_mask(model))


DEFENSES.register(
    Defense(
        "ft",
        "fine-tuning (FT), plain cross-entropy, no distillation",
        "Fine-tunes a copy of the model on the defender's clean images with plain cross-entropy, marking "
        "nothing: the simplest baseline, which a backdoor often survives.",
        _ft,
    )
)
DEFENSES.register(
    Defense(
        "ft-kd",
        "fine-tuning with self-distillation (the pair of ft; isolates what marking + AR add to bs-ar-kd)",
        "Fine-tunes a copy of the model on the defender's clean images with the same self-distillation from the "
        "original model that bs-ar-kd uses, but marks and penalizes nothing.",
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
        "fp-kd",
        "Fine-Pruning, then fine-tuning with distillation",
        "Fine-Pruning's channels pruned as in fp, then fine-tuned with the same self-distillation from the "
        "original model that bs-ar-kd uses: the pair of fp that shows what distillation adds.",
        _fp_kd,
        distill=True,
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


def _anp(model, clean, test, triggered, config, scores=None, mask=None) -> Purification:
    from .anp_prune import anp_prune_mask

    cfg = replace(config, metric="magnitude", reg="prune", steps=0)  # the metric is unused: the mask is ANP's
    return Purification(
        model, clean, test, triggered, cfg, mask=anp_prune_mask(model, clean, neuron_map(model), seed=config.seed)
    )


DEFENSES.register(
    Defense(
        "anp",
        "Adversarial Neuron Pruning (ANP)",
        "Adversarial Neuron Pruning: learns a mask per neuron on the clean images while an adversary perturbs "
        "every neuron by up to ±40%, then prunes the neurons whose mask ends at 0.2 or below (backdoor neurons "
        "are the ones whose small perturbation breaks the model); no fine-tuning. Published settings, 500 mask "
        "iterations instead of 2,000 (docs/METHOD.md).",
        _anp,
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
