"""Benign salience as its median over clean images: the paper's first-order term, estimated robustly.

The paper's BS is the *mean* over clean images of each image's first-order loss rise −(∂ℓᵢ/∂y)·y when the
neuron's output y is zeroed. At a training minimum almost every clean image is fitted and contributes ~0, so
the mean is carried by the few images with the highest loss (68–94% of it from 5% of the images on the
bundled models, ``bench/bs_stability.py``) and moves with whichever hard images a subset holds. The median
over images is what a typical clean image says instead: the same term, the same sign (low = the clean task
would lose little), steady across clean subsets (docs/METHOD.md, "Stability of benign salience").
"""

from __future__ import annotations

from torch import nn

from ..data import TensorData
from ..neurons import NeuronLayer, NeuronScores, neuron_map
from ..registry import SCORES, Score
from ..stability import per_sample_salience

NAME = "benign-median"


def compute(model: nn.Module, clean: TensorData, layers: dict[str, NeuronLayer] | None = None) -> NeuronScores:
    layers = layers if layers is not None else neuron_map(model)
    per_image = per_sample_salience(model, clean, layers)
    return NeuronScores(NAME, {n: v.median(0).values for n, v in per_image.items()})


SCORES.register(
    Score(
        name=NAME,
        label="benign salience, median over images",
        explanation=(
            "The same first-order estimate as benign salience (how much the clean loss would rise if the neuron "
            "were switched off), taken per clean image and summarised by the median instead of the mean. The "
            "model fits nearly every clean image, so the mean is carried by the few it gets wrong and changes "
            "with the subset; the median is what a typical clean image says, and stays put from one clean "
            "subset to the next on the bundled models. Low counts as suspect, as for benign salience."
        ),
        low_is_suspect=True,
        compute=compute,
        needs=frozenset({"clean"}),
        reference="ours: a robust estimate of Fan et al.'s benign salience",
        curve=False,  # near chance on the bundled models: the pruning curve keeps the paper's BS and the baselines
    )
)
