"""ANP: adversarial neuron perturbation (Wu & Wang, NeurIPS 2021), as a per-neuron score.

A mask m ∈ [0, 1] per neuron scales its output's weight part, and an adversary perturbs it:
(m + δ)·(y − b) + (1 + ξ)·b with |δ|, |ξ| ≤ ε, one signed-gradient step from a random start
to raise the clean loss. The masks are learned on the clean data to keep the loss low both
with and without the adversary: α·CE(clean) + (1 − α)·CE(perturbed), α = 0.2. A backdoor
neuron is one whose small perturbation breaks the model (backdoored models are sensitive
along those directions), and the masks that end low are the ones the model is better off
without. Score: the learned mask value; low = suspect. The masks are the ones the ANP
defense prunes by (``defense/anp_prune.py``, one implementation), here with 300 iterations.
"""

from __future__ import annotations

import torch
from torch import nn

from ..anp_prune import anp_mask_values
from ..data import TensorData
from ..neurons import NeuronLayer, NeuronScores, neuron_map
from ..registry import SCORES, Score

NAME = "anp"
ITERATIONS = 300  # published 2,000; see docs/METHOD.md for the measurement behind 300


def anp_masks(
    model: nn.Module, clean: TensorData, layers: dict[str, NeuronLayer], iterations: int = ITERATIONS, **kw
) -> dict[str, torch.Tensor]:
    """The learned masks per layer (the model is left as it was); ``kw`` as ``anp_prune.anp_mask_values``."""
    return anp_mask_values(model, clean, layers, iterations=iterations, **kw)


def compute(model: nn.Module, clean: TensorData, layers: dict[str, NeuronLayer] | None = None, **kw) -> NeuronScores:
    layers = layers if layers is not None else neuron_map(model)
    return NeuronScores(NAME, anp_masks(model, clean, layers, **kw))


SCORES.register(
    Score(
        name=NAME,
        label="ANP mask (adversarial neuron perturbation)",
        explanation=(
            "Each neuron gets a mask in [0, 1] that multiplies its output, and an adversary may scale every output "
            "by a further ±40% to break the model on clean images. The masks are learned on the clean data so that "
            "the model stays right with and without the adversary. A neuron whose small perturbation breaks the "
            "model, as a backdoor neuron's does, ends with a low mask; low counts as suspect. Costly: hundreds of "
            "optimisation steps."
        ),
        low_is_suspect=True,
        compute=lambda model, clean, layers: compute(model, clean, layers),
        needs=frozenset({"clean"}),
        reference="ANP (Wu & Wang, NeurIPS 2021)",
        cost="slow",
        curve=False,  # the pruning curve is measured with the fast scores
    )
)
