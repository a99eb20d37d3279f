"""Mean activation on clean data: Fine-Pruning's score."""

from __future__ import annotations

import torch
from torch import nn

from ..data import TensorData
from ..neurons import NeuronLayer, NeuronScores
from ..registry import SCORES, Score


@torch.no_grad()
def activation(
    model: nn.Module, clean: TensorData, layers: dict[str, NeuronLayer], batch_size: int = 500
) -> NeuronScores:
    """Mean post-ReLU output of each neuron over the clean data (eval mode)."""
    sums = {n: 0.0 for n in layers}
    hooks = []
    for name, nl in layers.items():

        def hook(_m, _inp, out, name=name):
            a = torch.relu(out)
            sums[name] = sums[name] + (a.mean(dim=(2, 3)) if a.dim() == 4 else a).sum(0)

        hooks.append(nl.output.register_forward_hook(hook))
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        for xb, _ in clean.batches(batch_size):
            model(xb.to(dev))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return NeuronScores("activation", {n: (s / len(clean)).cpu() for n, s in sums.items()})


SCORES.register(
    Score(
        name="activation",
        label="mean activation",
        explanation=(
            "How strongly the neuron fires on the defender's clean images: its output after ReLU, averaged over "
            "images (and positions, for a channel). Fine-Pruning assumes backdoor neurons stay quiet on clean "
            "inputs, so low activation counts as suspect."
        ),
        low_is_suspect=True,
        compute=lambda model, clean, layers: activation(model, clean, layers),
        needs=frozenset({"clean"}),
        reference="Fine-Pruning (Liu et al. 2018)",
    )
)
