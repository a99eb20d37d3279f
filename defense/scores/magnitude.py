"""Weight magnitude: the common pruning criterion."""

from __future__ import annotations

from torch import nn

from ..neurons import NeuronLayer, NeuronScores
from ..registry import SCORES, Score


def magnitude(model: nn.Module, layers: dict[str, NeuronLayer]) -> NeuronScores:
    """L2 norm of each neuron's incoming weights."""
    return NeuronScores(
        "magnitude", {n: nl.layer.weight.detach().flatten(1).norm(dim=1).cpu() for n, nl in layers.items()}
    )


SCORES.register(
    Score(
        name="magnitude",
        label="weight magnitude",
        explanation=(
            "The length (L2 norm) of the neuron's incoming weights, read from the model alone. Magnitude "
            "pruning treats small weights as unimportant, so low magnitude counts as suspect here."
        ),
        low_is_suspect=True,
        compute=lambda model, clean, layers: magnitude(model, layers),
        needs=frozenset(),
        reference="magnitude pruning (Han et al. 2015)",
    )
)
