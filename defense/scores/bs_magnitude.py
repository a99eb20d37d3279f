"""Large but little benign salience: per layer, rank of weight magnitude minus rank of BS.

Infected neurons have large weights (magnitude read as "high = suspect" ranks them well
above chance) yet the clean task leans on them less than their size suggests. Per layer
both scores are turned into ranks scaled to [0, 1] (0 = smallest), and the score is
rank(magnitude) − rank(BS), in [−1, 1]; high = suspect. Ranks make the two comparable
without choosing a scale between a weight norm and a loss change, and per-layer ranks
make layers comparable with each other.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data import TensorData
from ..neurons import NeuronLayer, NeuronScores, neuron_map
from ..registry import SCORES, Score
from ..salience import benign_salience
from .magnitude import magnitude

NAME = "bs-magnitude"


def layer_rank(v: torch.Tensor) -> torch.Tensor:
    """Ranks scaled to [0, 1], 0 = smallest value; ties share their mean rank."""
    n = len(v)
    if n < 2:
        return torch.zeros(n)
    less = (v.view(1, -1) < v.view(-1, 1)).sum(1).float()
    equal = (v.view(1, -1) == v.view(-1, 1)).sum(1).float()
    return (less + (equal - 1) / 2) / (n - 1)


def combine(magnitude: NeuronScores, benign: NeuronScores) -> NeuronScores:
    return NeuronScores(
        NAME, {n: layer_rank(magnitude.layers[n]) - layer_rank(benign.layers[n]) for n in magnitude.layers}
    )


def compute(model: nn.Module, clean: TensorData, layers: dict[str, NeuronLayer] | None = None) -> NeuronScores:
    layers = layers if layers is not None else neuron_map(model)
    bs = benign_salience(model, clean, layers=layers)[0]
    return combine(magnitude(model, layers), bs)


SCORES.register(
    Score(
        name=NAME,
        label="magnitude rank − BS rank",
        explanation=(
            "Large weights but little benign salience. In each layer the neurons are ranked by weight magnitude "
            "and by benign salience (both scaled to [0, 1]); the score is the magnitude rank minus the BS rank. "
            "Infected neurons tend to be large, yet the clean task leans on them less than their size suggests; "
            "high counts as suspect."
        ),
        low_is_suspect=False,
        compute=lambda model, clean, layers: compute(model, clean, layers),
        needs=frozenset({"clean"}),
        reference="this project (from issue 9's measurement)",
    )
)
