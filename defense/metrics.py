"""Clean accuracy and attack success rate (ASR)."""

from __future__ import annotations

import torch
from torch import nn

from .attacks import Trigger
from .data import TensorData
from .neurons import NeuronLayer, NeuronScores, neuron_masking
from .runtime import StopCheck, check_stop
from .targets import Target, as_target


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = torch.cat([model(x[i : i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def triggered_set(test: TensorData, trigger: Trigger, target: int | Target) -> TensorData:
    """Triggered copies of the test images the attack can flip, labelled with the label it wants."""
    target = as_target(target)
    keep = target.flippable(test.y)
    return TensorData(trigger.apply(test.x[keep]), target.labels_for(test.y[keep]))


def accuracy(model: nn.Module, data: TensorData) -> float:
    if len(data) == 0:
        return float("nan")
    return float((predict(model, data.x) == data.y).float().mean())


def evaluate(
    model: nn.Module,
    test: TensorData,
    trigger: Trigger | None,
    target: int | Target,
    triggered: TensorData | None = None,
) -> dict[str, float]:
    """{'clean_acc', 'asr'} as fractions; ASR counts only images whose true label is not the one the attack wants."""
    triggered = triggered if triggered is not None else triggered_set(test, trigger, target)
    return {"clean_acc": accuracy(model, test), "asr": accuracy(model, triggered)}


# ---------------------------------------------------------------- identification quality


def target_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of (logit of the label − largest other logit): how firmly the label wins."""
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, labels.view(-1, 1), float("-inf")).max(1).values
    return (own - other).mean()


@torch.no_grad()
def backdoor_ground_truth(
    model: nn.Module,
    layers: dict[str, NeuronLayer],
    test: TensorData,
    triggered: TensorData,
    infected_fraction: float = 0.1,
    max_images: int = 256,
    effect: str = "margin",
    max_neurons: int | None = None,
    seed: int = 0,
    should_stop: StopCheck = None,
) -> dict:
    """Which neurons carry the backdoor, measured by ablation when the trigger is known.

    Each neuron is zeroed on its own; its *backdoor effect* is how much the triggered
    images' hold on the target label falls, its *clean effect* the same for the clean
    images' true labels. ``effect='margin'`` (default) measures the hold as the mean
    logit margin (target logit − largest other); ``effect='loss'`` as the rise of the
    cross-entropy. The cross-entropy saturates: a backdoor that wins by a wide margin has
    a triggered loss near 1e-8 (mnist-badnets), so zeroing almost any neuron moves it by
    float32 rounding only, and its top 10% were noise beyond the first one or two neurons.
    The ``infected_fraction`` of neurons with the largest positive backdoor effect are
    labelled infected.

    With more than ``max_neurons`` neurons only a uniform random sample of that many (``seed``) is
    ablated: the others get NaN effects and are not labelled, and ``measured`` says which were.
    ``should_stop`` is asked before each neuron (raises runtime.Cancelled).
    Returns {'backdoor_effect', 'clean_effect', 'infected', 'measured'}, each {layer: tensor},
    and 'sampled' (False, or the share of neurons measured).
    """
    hold = hold_measure(effect)
    dev = next(model.parameters()).device
    xt, yt = triggered.x[:max_images].to(dev), triggered.y[:max_images].to(dev)
    xc, yc = test.x[:max_images].to(dev), test.y[:max_images].to(dev)
    was = model.training
    model.eval()
    base_b, base_c = float(hold(model(xt), yt)), float(hold(model(xc), yc))
    measured = neuron_sample(layers, max_neurons, seed)
    backdoor, clean = {}, {}
    for name, nl in layers.items():
        b, c = torch.full((nl.size,), float("nan")), torch.full((nl.size,), float("nan"))
        for i in measured[name].nonzero().flatten().tolist():
            check_stop(should_stop)
            keep = torch.ones(nl.size, dtype=torch.bool)
            keep[i] = False
            with neuron_masking({name: nl}, {name: ~keep}):
                b[i] = base_b - float(hold(model(xt), yt))
                c[i] = base_c - float(hold(model(xc), yc))
        backdoor[name], clean[name] = b, c
    model.train(was)
    return truth_result(backdoor, clean, measured, infected_fraction)


def hold_measure(effect: str = "margin"):
    """(logits, labels) -> how firmly the labels win: the mean logit margin, or minus the cross-entropy."""
    if effect not in ("margin", "loss"):
        raise ValueError(f"unknown effect '{effect}': expected 'margin' or 'loss'")
    ce = nn.CrossEntropyLoss()

    def hold(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return target_margin(logits, labels) if effect == "margin" else -ce(logits, labels)

    return hold


def neuron_sample(layers: dict[str, NeuronLayer], max_neurons: int | None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per layer, which neurons to ablate: all, or a uniform random sample of ``max_neurons`` (seeded)."""
    total = sum(nl.size for nl in layers.values())
    chosen = torch.ones(total, dtype=torch.bool)
    if max_neurons is not None and total > max_neurons:
        chosen[:] = False
        chosen[torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_neurons]] = True
    return dict(zip(layers, chosen.split([nl.size for nl in layers.values()]), strict=True))


def truth_result(
    backdoor: dict[str, torch.Tensor],
    clean: dict[str, torch.Tensor],
    measured: dict[str, torch.Tensor],
    infected_fraction: float,
) -> dict:
    """The ground truth's result dict, shared by the hook version here and the fast one in ablation.py."""
    chosen = torch.cat(list(measured.values()))
    return {
        "backdoor_effect": backdoor,
        "clean_effect": clean,
        "infected": top_fraction(backdoor, infected_fraction),
        "measured": measured,
        "sampled": False if bool(chosen.all()) else float(chosen.float().mean()),
    }


def top_fraction(values: dict[str, torch.Tensor], fraction: float = 0.1) -> dict[str, torch.Tensor]:
    """Per layer, which neurons are among the ``fraction`` with the largest positive value over all layers.

    NaN values (neurons not measured) are never labelled and do not count towards the fraction.
    """
    flat = torch.cat(list(values.values()))
    known = flat[~flat.isnan()]
    if len(known) == 0:
        return {n: torch.zeros(len(v), dtype=torch.bool) for n, v in values.items()}
    k = max(1, int(round(fraction * len(known))))
    cut = known.topk(k).values[-1]
    return {n: (v >= cut) & (v > 0) for n, v in values.items()}  # NaN compares False


def roc_auc(suspicion: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count half)."""
    pos, neg = suspicion[positive], suspicion[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos.view(-1, 1) > neg.view(1, -1)).float().mean()
    ties = (pos.view(-1, 1) == neg.view(1, -1)).float().mean()
    return float(greater + 0.5 * ties)


def roc_curve(suspicion: torch.Tensor, positive: torch.Tensor) -> tuple[list[float], list[float]]:
    """False- and true-positive rates as the threshold sweeps from most to least suspect.

    One point per distinct score: neurons with equal scores cross the threshold together, so
    the segment over a tie is a diagonal and the area under the curve equals ``roc_auc``.
    """
    order = suspicion.argsort(descending=True)
    ranked, hits = suspicion[order], positive[order].float()
    tp, fp = hits.cumsum(0), (1 - hits).cumsum(0)
    last_of_tie = torch.ones(len(ranked), dtype=torch.bool)
    last_of_tie[:-1] = ranked[1:] != ranked[:-1]
    tp, fp = tp[last_of_tie], fp[last_of_tie]
    p, n = max(float(hits.sum()), 1.0), max(float((1 - hits).sum()), 1.0)
    return [0.0] + (fp / n).tolist(), [0.0] + (tp / p).tolist()


def precision_at_k(suspicion: torch.Tensor, positive: torch.Tensor, k: int | None = None) -> float:
    """Share of infected neurons among the k most suspect (k = number of infected by default)."""
    k = int(positive.sum()) if k is None else k
    if k == 0:
        return float("nan")
    return float(positive[suspicion.topk(k).indices].float().mean())


def identification_quality(
    scores: NeuronScores, infected: dict[str, torch.Tensor], measured: dict[str, torch.Tensor] | None = None
) -> dict[str, float]:
    """ROC AUC and precision at k of a score's suspicion against the infected labels (of ``measured`` neurons)."""
    s = scores.suspicion()
    flat_s = torch.cat([s[n] for n in infected])
    flat_p = torch.cat([infected[n] for n in infected])
    if measured is not None:
        keep = torch.cat([measured[n] for n in infected])
        flat_s, flat_p = flat_s[keep], flat_p[keep]
    return {"auc": roc_auc(flat_s, flat_p), "precision_at_k": precision_at_k(flat_s, flat_p)}
