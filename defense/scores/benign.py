"""Benign salience (the paper's score); the computation is in ``defense/salience.py``."""

from __future__ import annotations

from ..registry import SCORES, Score
from ..salience import benign_salience

SCORES.register(
    Score(
        name="benign",
        label="benign salience",
        explanation=(
            "How much the clean loss would rise if the neuron were switched off, estimated to first order from "
            "the gradient of the loss on the defender's clean images (−∂L/∂w ⊙ w, averaged over batches and "
            "summed over the weights that produce the neuron's output). A neuron the clean task barely uses "
            "scores low; the paper reads low benign salience as suspect."
        ),
        low_is_suspect=True,
        compute=lambda model, clean, layers: benign_salience(model, clean, layers=layers)[0],
        needs=frozenset({"clean"}),
        reference="Fan et al., arXiv 2208.06537",
    )
)
