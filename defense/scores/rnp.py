"""RNP: reconstructive neuron pruning (Li et al., ICML 2023), as a per-neuron score.

Two steps on the defender's clean data. *Unlearn*: a copy of the model forgets the clean task by
gradient ascent on the clean loss until its clean accuracy falls to 20% (the published threshold;
``unlearn.unlearned_copy``). *Recover*: on that unlearned copy, with its weights frozen, a mask in
[0, 1] per neuron (1 at the start) is learned to bring the clean loss back down (SGD, lr 0.2,
momentum 0.9, published). Unlearning breaks the clean task through the benign neurons and leaves the
backdoor's path largely alone, so recovering the clean task has no use for the backdoor neurons and
their masks fall; the score is the learned mask value, low = suspect.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data import TensorData
from ..masks import NeuronMasks, frozen
from ..neurons import NeuronLayer, NeuronScores, neuron_map
from ..registry import SCORES, Score
from ..runtime import step_done
from .unlearn import unlearned_copy

NAME = "rnp"
UNLEARN_ACC = 0.20  # published: unlearning stops at this clean accuracy
MASK_LR = 0.2  # published (SGD, momentum 0.9)
RECOVER_EPOCHS = 20  # published
BATCH = 128  # published


def recovered_masks(
    model: nn.Module,
    clean: TensorData,
    epochs: int = RECOVER_EPOCHS,
    lr: float = MASK_LR,
    batch_size: int = BATCH,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Masks learned on ``model`` (frozen) to lower the clean loss; the model is left as it was."""
    layers = neuron_map(model)
    dev = next(model.parameters()).device
    masks = NeuronMasks(layers, dev)
    opt = torch.optim.SGD(masks.mask_params(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    with frozen(model):
        for _ in range(epochs):
            for xb, yb in clean.batches(batch_size, generator=gen):
                xb, yb = xb.to(dev), yb.to(dev)
                with masks.active():
                    loss = loss_fn(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward(inputs=masks.mask_params())
                opt.step()
                masks.clip_mask()
                step_done()
    return masks.values()


def compute(
    model: nn.Module, clean: TensorData, layers: dict[str, NeuronLayer] | None = None, seed: int = 0, **kw
) -> NeuronScores:
    layers = layers if layers is not None else neuron_map(model)
    unlearned, _ = unlearned_copy(model, clean, stop_acc=UNLEARN_ACC, batch_size=BATCH, seed=seed)
    masks = recovered_masks(unlearned, clean, seed=seed, **kw)
    return NeuronScores(NAME, {name: masks[name] for name in layers})


SCORES.register(
    Score(
        name=NAME,
        label="RNP mask (reconstructive neuron pruning)",
        explanation=(
            "A copy of the model first forgets the clean task (gradient ascent on the clean loss until it gets only "
            "20% of the clean images right). Then, with that copy's weights fixed, a mask in [0, 1] per neuron is "
            "learned that brings the clean task back. Forgetting goes through the benign neurons and leaves the "
            "backdoor's path alone, so the recovery has no use for the backdoor neurons and their masks fall; low "
            "counts as suspect."
        ),
        low_is_suspect=True,
        compute=lambda model, clean, layers: compute(model, clean, layers),
        needs=frozenset({"clean"}),
        reference="RNP (Li et al., ICML 2023)",
        cost="slow",
        curve=False,  # the pruning curve is measured with the fast scores
    )
)
