"""Clean accuracy and attack success rate (ASR)."""

from __future__ import annotations

import torch
from torch import nn

from .attacks import Trigger
from .data import TensorData
from .neurons import NeuronLayer, NeuronScores, neuron_masking


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = torch.cat([model(x[i : i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def triggered_set(test: TensorData, trigger: Trigger, target: int) -> TensorData:
    """Triggered copies of the test images whose true label is not the target."""
    keep = test.y != target
    return TensorData(trigger.apply(test.x[keep]), torch.full((int(keep.sum()),), target, dtype=torch.int64))


def accuracy(model: nn.Module, data: TensorData) -> float:
    if len(data) == 0:
        return float("nan")
    return float((predict(model, data.x) == data.y).float().mean())


def evaluate(
    model: nn.Module, test: TensorData, trigger: Trigger | None, target: int, triggered: TensorData | None = None
) -> dict[str, float]:
    """{'clean_acc', 'asr'} as fractions; ASR counts only images whose true label is not the target."""
    triggered = triggered if triggered is not None else triggered_set(test, trigger, target)
    return {"clean_acc": accuracy(model, test), "asr": accuracy(model, triggered)}


# ---------------------------------------------------------------- identification quality


@torch.no_grad()
def backdoor_ground_truth(
    model: nn.Module,
    layers: dict[str, NeuronLayer],
    test: TensorData,
    triggered: TensorData,
    infected_fraction: float = 0.1,
    max_images: int = 256,
) -> dict[str, dict[str, torch.Tensor]]:
    """Which neurons carry the backdoor, measured by ablation when the trigger is known.

    Each neuron is zeroed on its own; its *backdoor effect* is the rise of the
    cross-entropy of triggered images towards the target label, its *clean effect* the
    rise of the clean loss. The ``infected_fraction`` of neurons with the largest
    positive backdoor effect are labelled infected.
    Returns {'backdoor_effect', 'clean_effect', 'infected'}, each {layer: tensor}.
    """
    loss = nn.CrossEntropyLoss()
    dev = next(model.parameters()).device
    xt, yt = triggered.x[:max_images].to(dev), triggered.y[:max_images].to(dev)
    xc, yc = test.x[:max_images].to(dev), test.y[:max_images].to(dev)
    was = model.training
    model.eval()
    base_b, base_c = float(loss(model(xt), yt)), float(loss(model(xc), yc))
    backdoor, clean = {}, {}
    for name, nl in layers.items():
        b, c = torch.zeros(nl.size), torch.zeros(nl.size)
        for i in range(nl.size):
            keep = torch.ones(nl.size, dtype=torch.bool)
            keep[i] = False
            with neuron_masking({name: nl}, {name: ~keep}):
                b[i] = float(loss(model(xt), yt)) - base_b
                c[i] = float(loss(model(xc), yc)) - base_c
        backdoor[name], clean[name] = b, c
    model.train(was)
    flat = torch.cat(list(backdoor.values()))
    k = max(1, int(round(infected_fraction * len(flat))))
    cut = flat.topk(k).values[-1]
    infected = {n: (v >= cut) & (v > 0) for n, v in backdoor.items()}
    return {"backdoor_effect": backdoor, "clean_effect": clean, "infected": infected}


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


def identification_quality(scores: NeuronScores, infected: dict[str, torch.Tensor]) -> dict[str, float]:
    """ROC AUC and precision at k of a score's suspicion against the infected labels."""
    s = scores.suspicion()
    flat_s = torch.cat([s[n] for n in infected])
    flat_p = torch.cat([infected[n] for n in infected])
    return {"auc": roc_auc(flat_s, flat_p), "precision_at_k": precision_at_k(flat_s, flat_p)}
