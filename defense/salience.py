"""Benign salience, and computing any registered per-neuron score by name.

Benign salience (BS) is −∂L/∂w ⊙ w on clean batches, an exponential moving average
(η = 0.9, bias-corrected), kept per parameter. Per neuron it is the sum over the
parameters that produce the neuron's output, which equals −Σ (∂L/∂y)·y: the first-order
estimate of how much the clean loss rises when the neuron is zeroed. Low = suspect.

Every score (benign salience among them) is an entry of ``registry.SCORES``, one file
each under ``defense/scores/``; ``compute(name, ...)`` runs one by name.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import TensorData
from .neurons import NeuronLayer, NeuronScores, neuron_map, scores_frame
from .registry import SCORES

__all__ = ["BenignSalience", "NeuronLayer", "NeuronScores", "benign_salience", "compute", "neuron_map", "scores_frame"]


class BenignSalience:
    """Running benign salience of every parameter: s ← η·s − (1−η)·g⊙w, bias-corrected.

    Feed it gradients of the clean loss (``update``) after each backward pass; it is used
    both for the warm-up pass over the clean data and during fine-tuning.
    """

    def __init__(self, model: nn.Module, momentum: float = 0.9):
        self.model = model
        self.momentum = momentum
        self.updates = 0
        self.state = {name: torch.zeros_like(p) for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        for name, p in self.model.named_parameters():
            if p.grad is not None:
                self.state[name].mul_(self.momentum).add_(p.grad * p, alpha=-(1 - self.momentum))

    def per_parameter(self) -> dict[str, torch.Tensor]:
        correction = 1 - self.momentum ** max(self.updates, 1)
        return {name: s / correction for name, s in self.state.items()}

    def per_neuron(self, layers: dict[str, NeuronLayer]) -> NeuronScores:
        per_param = self.per_parameter()
        names = {id(p): n for n, p in self.model.named_parameters()}
        scores = {}
        for lname, nl in layers.items():
            total = torch.zeros(nl.size, device=next(self.model.parameters()).device)
            for p in nl.output_params():
                s = per_param[names[id(p)]]
                total += s.flatten(1).sum(1) if s.dim() > 1 else s
            scores[lname] = total.detach().cpu()
        return NeuronScores("benign", scores)


def benign_salience(
    model: nn.Module,
    clean: TensorData,
    batch_size: int = 64,
    momentum: float = 0.9,
    layers: dict[str, NeuronLayer] | None = None,
) -> tuple[NeuronScores, BenignSalience]:
    """A warm-up pass of benign salience over the clean data (eval mode, no weight change)."""
    layers = layers if layers is not None else neuron_map(model)
    was = model.training
    model.eval()  # scored as deployed: BatchNorm uses its running statistics
    dev = next(model.parameters()).device
    tracker = BenignSalience(model, momentum)
    loss_fn = nn.CrossEntropyLoss()
    for xb, yb in clean.batches(batch_size):
        model.zero_grad(set_to_none=True)
        loss_fn(model(xb.to(dev)), yb.to(dev)).backward()
        tracker.update()
    model.zero_grad(set_to_none=True)
    model.train(was)
    return tracker.per_neuron(layers), tracker


def compute(
    name: str, model: nn.Module, clean: TensorData | None = None, layers: dict[str, NeuronLayer] | None = None
) -> NeuronScores:
    """Per-neuron scores of the registered score ``name``; ``clean`` is needed by the data-driven ones."""
    if name not in SCORES:
        raise ValueError(f"unknown score '{name}': expected one of {', '.join(SCORES.names())}")
    score = SCORES[name]
    if "clean" in score.needs and clean is None:
        raise ValueError(f"score '{name}' needs the defender's clean images")
    return score.compute(model, clean, layers if layers is not None else neuron_map(model))
