"""ANP: adversarial neuron perturbation (Wu & Wang, NeurIPS 2021), as a per-neuron score.

A mask m ∈ [0, 1] per neuron multiplies its output; an adversary multiplies each output
further by (m + δ), |δ| ≤ ε, choosing δ (one signed-gradient step from a random start)
to raise the clean loss. The masks are learned on the clean data to keep the loss low
both with and without the adversary: α·CE(clean) + (1 − α)·CE(perturbed), α = 0.2. A
backdoor neuron is one whose small perturbation breaks the model (backdoored models are
sensitive along those directions), and the masks that end low are the ones the model
is better off without. Score: the learned mask value; low = suspect.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data import TensorData
from ..masks import NeuronMasks, frozen
from ..neurons import NeuronLayer, NeuronScores, neuron_map
from ..registry import SCORES, Score

NAME = "anp"
EPS = 0.4  # published
ALPHA = 0.2  # published: weight of the unperturbed loss
MASK_LR = 0.2  # published (SGD, momentum 0.9)
BATCH = 128  # published
ITERATIONS = 300  # published 2,000; see docs/METHOD.md for the measurement behind 300


def anp_masks(
    model: nn.Module,
    clean: TensorData,
    layers: dict[str, NeuronLayer],
    iterations: int = ITERATIONS,
    eps: float = EPS,
    alpha: float = ALPHA,
    lr: float = MASK_LR,
    batch_size: int = BATCH,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The learned masks per layer (the model is left as it was)."""
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    masks = NeuronMasks(layers, dev)
    mask_opt = torch.optim.SGD(masks.mask_params(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    step = 0
    with frozen(model):
        while step < iterations:
            for xb, yb in clean.batches(batch_size, generator=gen):
                if step >= iterations:
                    break
                xb, yb = xb.to(dev), yb.to(dev)
                if eps > 0:
                    masks.reset_noise(eps, gen)
                    with masks.active(perturb=True):
                        adv = -loss_fn(model(xb), yb)
                    grads = torch.autograd.grad(adv, masks.noise_params())
                    with torch.no_grad():
                        for d, g in zip(masks.noise_params(), grads):
                            d.sub_(eps * g.sign())  # descend on −CE: the loss rises
                    masks.clip_noise(eps)
                    with masks.active(perturb=True):
                        robust = loss_fn(model(xb), yb)
                else:
                    robust = torch.zeros((), device=dev)
                with masks.active():
                    natural = loss_fn(model(xb), yb)
                mask_opt.zero_grad(set_to_none=True)
                (alpha * natural + (1 - alpha) * robust).backward(inputs=masks.mask_params())
                mask_opt.step()
                masks.clip_mask()
                step += 1
    return masks.values()


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
