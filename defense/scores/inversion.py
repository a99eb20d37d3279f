"""Reversed-trigger ablation: Neural Cleanse's trigger reverse-engineering, then neuron ablation.

Two steps on the defender's clean data only. *Reverse*: for every class t, a mask m ∈ [0, 1]^{H×W}
(shared by the channels) and a pattern p ∈ [0, 1]^{C×H×W} are optimised so that (1 − m)·x + m·p sends
the clean images of the other classes to t while m stays small: Adam on CE(f(x'), t) + λ·Σm
(Neural Cleanse, Wang et al., S&P 2019, with a fixed λ instead of its schedule). A backdoor is a
shortcut to its target, so the target's reversed trigger is much smaller than any other class's;
the class with the smallest mask among those whose trigger flips at least half of the held images
is taken as the suspected target. *Ablate*: each neuron is zeroed in turn on the clean images carrying
that reversed trigger, and its score is how much the images' logit margin for the suspected target
falls (the measurement of ``ablation.ground_truth``, with the reversed trigger in place of the real
one, which the defender does not have). A neuron the reversed trigger's pull runs through scores
high; high = suspect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .. import ablation
from ..attacks import MaskPatternTrigger
from ..data import TensorData
from ..masks import frozen
from ..neurons import NeuronLayer, NeuronScores, neuron_map
from ..registry import SCORES, Score
from ..runtime import step_done

NAME = "inversion"
STEPS = 200  # Adam steps per class: fewer left the masks unconverged (docs/METHOD.md)
LR = 0.1
BATCH = 32
LAMBDA = 0.01  # per mask pixel: a 3x3 patch costs 0.09 against a cross-entropy of order 1
MIN_FLIP = 0.5  # a reversed trigger must send at least this share of the held images to its class
MASK_INIT = -2.0  # sigmoid(-2) = 0.12: a faint start everywhere
CLEAN_HALF = 16  # ablation.ground_truth also measures clean images; this score does not use them


@dataclass
class ReversedTrigger(MaskPatternTrigger):
    """One class's reversed trigger, a mask/pattern trigger (x' = (1 − mask)·x + mask·pattern) whose mask is the
    same in every channel."""

    kind: str = "reversed"
    target: int = 0
    flip_rate: float = 0.0  # share of the held images (other classes) sent to ``target``

    @property
    def size(self) -> float:
        """The mask's L1 norm over one channel: how many pixels' worth the trigger needs."""
        return float(self.mask[0].sum())


def reverse_trigger(
    model: nn.Module,
    clean: TensorData,
    target: int,
    steps: int = STEPS,
    lam: float = LAMBDA,
    batch_size: int = BATCH,
    seed: int = 0,
) -> ReversedTrigger:
    """The smallest mask and pattern found that send ``clean``'s other-class images to ``target``."""
    dev = next(model.parameters()).device
    x = clean.x[clean.y != target]
    c, h, w = clean.x.shape[1:]
    mask_raw = torch.full((1, 1, h, w), MASK_INIT, device=dev, requires_grad=True)
    pattern_raw = torch.zeros((1, c, h, w), device=dev, requires_grad=True)
    opt = torch.optim.Adam([mask_raw, pattern_raw], lr=LR)
    gen = torch.Generator().manual_seed(seed)
    with frozen(model), torch.enable_grad():
        for _ in range(steps):
            xb = x[torch.randint(len(x), (min(batch_size, len(x)),), generator=gen)].to(dev)
            mask, pattern = torch.sigmoid(mask_raw), torch.sigmoid(pattern_raw)
            logits = model((1 - mask) * xb + mask * pattern)
            loss = F.cross_entropy(logits, torch.full((len(xb),), target, device=dev)) + lam * mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=[mask_raw, pattern_raw])
            opt.step()
            step_done()
        with torch.no_grad():
            pattern = torch.sigmoid(pattern_raw)[0].cpu()
            mask = torch.sigmoid(mask_raw)[0].cpu().expand_as(pattern).contiguous()
            found = ReversedTrigger(mask, pattern, target=target)
            held = found.apply(x[:500].to(dev))
            found.flip_rate = float((model(held).argmax(1) == target).float().mean())
    return found


def reverse_all(model: nn.Module, clean: TensorData, num_classes: int, seed: int = 0, **kw) -> list[ReversedTrigger]:
    """A reversed trigger for every class that has other-class images to flip."""
    return [reverse_trigger(model, clean, t, seed=seed, **kw) for t in range(num_classes) if bool((clean.y != t).any())]


def candidates(triggers: list[ReversedTrigger]) -> list[ReversedTrigger]:
    """The reversed triggers that flip at least MIN_FLIP (all of them if none do), smallest first."""
    working = [t for t in triggers if t.flip_rate >= MIN_FLIP] or triggers
    return sorted(working, key=lambda t: t.size)


def suspected(triggers: list[ReversedTrigger]) -> ReversedTrigger:
    """The smallest reversed trigger among those that flip at least MIN_FLIP (the smallest of all if none do)."""
    return candidates(triggers)[0]


@dataclass
class TriggerMix:
    """Several reversed triggers, stamped in turn: a batch is cut into as many contiguous parts, one trigger each.

    For ``PurifyConfig.reversed_count`` > 1: unlearning the few smallest reversed triggers instead of only the
    suspected one still hits the backdoor when Neural Cleanse suspects the wrong label (a warp's target came
    third). ``nc-ar`` unlearns three, in batches of up to 200 images that pay back the accuracy it cost with
    batches of 64 (docs/METHOD.md, "Batches of the whole clean subset").
    """

    triggers: list[ReversedTrigger]

    @property
    def target(self) -> int:
        """The suspected target: the first (smallest) trigger's class."""
        return self.triggers[0].target

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        parts = torch.tensor_split(torch.arange(len(x), device=x.device), len(self.triggers))
        for trigger, rows in zip(self.triggers, parts, strict=True):
            if len(rows):
                out[rows] = trigger.apply(x[rows])
        return out


def anomaly_index(triggers: list[ReversedTrigger], chosen: ReversedTrigger) -> float:
    """Neural Cleanse's outlier measure of the chosen trigger's size: (median − size) / (1.4826·MAD).

    Above 2 the class is an outlier (a backdoor is likely); a clean model's classes sit below it.
    """
    sizes = torch.tensor([t.size for t in triggers])
    median = sizes.median()
    mad = (sizes - median).abs().median() * 1.4826
    return float((median - chosen.size) / mad.clamp_min(1e-12))


def ablation_scores(
    model: nn.Module, layers: dict[str, NeuronLayer], clean: TensorData, trigger: ReversedTrigger
) -> dict[str, torch.Tensor]:
    """Per neuron, the fall of the reversed-triggered images' margin for the trigger's class when it is zeroed."""
    images, _ = ablation.plan(sum(nl.size for nl in layers.values()))
    x = clean.x[clean.y != trigger.target][:images]
    stamped = TensorData(trigger.apply(x), torch.full((len(x),), trigger.target, dtype=torch.int64))
    few_clean = clean.subset(torch.arange(min(CLEAN_HALF, len(clean))))
    return ablation.ground_truth(model, layers, few_clean, stamped, max_images=images)["backdoor_effect"]


def reverse(model: nn.Module, clean: TensorData, seed: int = 0, **kw) -> tuple[list[ReversedTrigger], ReversedTrigger]:
    """Every label's reversed trigger, and the suspected one."""
    with frozen(model), torch.no_grad():
        num_classes = int(model(clean.x[:1].to(next(model.parameters()).device)).shape[1])
    triggers = reverse_all(model, clean, num_classes, seed=seed, **kw)
    return triggers, suspected(triggers)


def compute(
    model: nn.Module, clean: TensorData, layers: dict[str, NeuronLayer] | None = None, seed: int = 0, **kw
) -> NeuronScores:
    layers = layers if layers is not None else neuron_map(model)
    triggers, chosen = reverse(model, clean, seed=seed, **kw)
    details = {
        "suspected_target": chosen.target,
        "anomaly_index": round(anomaly_index(triggers, chosen), 3),
        "trigger": chosen,
        "candidates": candidates(triggers),  # smallest first: what purification's unlearning stamps
        "sizes": {t.target: round(t.size, 2) for t in triggers},
        "flip_rates": {t.target: round(t.flip_rate, 3) for t in triggers},
    }
    return NeuronScores(NAME, ablation_scores(model, layers, clean, chosen), details)


SCORES.register(
    Score(
        name=NAME,
        label="reversed-trigger ablation (Neural Cleanse)",
        explanation=(
            "First the trigger is reverse-engineered from clean images: for every class, the smallest mask and "
            "pattern that send images of the other classes to that class (Neural Cleanse). A backdoor is a "
            "shortcut, so its target needs a much smaller trigger than any other class; the smallest one is taken "
            "as the suspect. Then each neuron is switched off in turn on clean images carrying that reversed "
            "trigger: the more the pull towards the target falls, the more the neuron carries the backdoor. High "
            "counts as suspect. Costly: an optimisation per class, then one pass per neuron."
        ),
        low_is_suspect=False,
        compute=lambda model, clean, layers: compute(model, clean, layers),
        needs=frozenset({"clean"}),
        reference="Neural Cleanse (Wang et al., S&P 2019) + ablation",
        cost="slow",
        curve=False,  # the pruning curve is measured with the fast scores
    )
)
