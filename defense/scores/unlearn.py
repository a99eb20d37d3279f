"""Weight change under clean unlearning (TSBD's neuron weight change, Lin et al., NeurIPS 2024).

A copy of the model *unlearns* the defender's clean data: gradient ascent on the clean
cross-entropy (SGD, lr 0.01, momentum 0.9, BatchNorm on its running statistics) (gradient norm capped at 1)
until its accuracy over a pass of that data falls to 10% (chance for ten classes), or it gives every image of
a pass the same label (collapsed: its accuracy is then that label's share of the data, which may stay above 10%),
or a step budget runs out.
Per neuron the score is the norm of the change of its parameters (weight row, bias,
BatchNorm γ and β), relative to their norm before. TSBD's finding: the neurons that move
most when clean behaviour is destroyed are the ones that also move most when the backdoor
is unlearned; high = suspect.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..data import TensorData
from ..neurons import NeuronLayer, NeuronScores, neuron_map
from ..registry import SCORES, Score
from ..runtime import step_done

NAME = "unlearn"
LR = 0.01
STOP_ACC = 0.10  # accuracy on the clean data at which unlearning stops
MAX_STEPS = 200
BATCH = 64
GRAD_CLIP = 1.0  # gradient norm cap per step


def unlearned_copy(
    model: nn.Module,
    clean: TensorData,
    lr: float = LR,
    stop_acc: float = STOP_ACC,
    max_steps: int = MAX_STEPS,
    batch_size: int = BATCH,
    seed: int = 0,
    stop_on_collapse: bool = True,
) -> tuple[nn.Module, int]:
    """A copy of ``model`` after gradient ascent on the clean loss, and the steps it took.

    Stops after a pass over the clean data whose accuracy, counted on each batch's own outputs before its step,
    is at most ``stop_acc`` (RNP's reference code stops this way), or (``stop_on_collapse``) in which every
    image got the same label, or after ``max_steps`` steps. A separate accuracy pass after every step would
    double the cost. Collapse is the usual end of ascent on the cross-entropy; its accuracy is the share of
    the one label it predicts, which can stay above 10%: on 4 of the 15 bundled model/subset pairs the ascent
    then ran to the step budget (200 steps, not 20–40) moving weights without changing what it predicts.
    """
    work = copy.deepcopy(model)
    work.eval()
    for p in work.parameters():
        p.requires_grad_(True)
    dev = next(work.parameters()).device
    opt = torch.optim.SGD(work.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    step = 0
    while step < max_steps:
        correct = seen = 0
        labels_seen: set[int] = set()
        for xb, yb in clean.batches(batch_size, generator=gen):
            xb, yb = xb.to(dev), yb.to(dev)
            opt.zero_grad(set_to_none=True)
            logits = work(xb)
            predicted = logits.argmax(1)
            correct += int((predicted == yb).sum())
            seen += len(yb)
            labels_seen.update(predicted.unique().tolist())
            (-loss_fn(logits, yb)).backward()
            # ascent on an unbounded loss explodes within a few steps without a cap
            torch.nn.utils.clip_grad_norm_(work.parameters(), GRAD_CLIP)
            opt.step()
            step += 1
            step_done()
            if step >= max_steps:
                return work, step
        if correct <= stop_acc * seen or (stop_on_collapse and len(labels_seen) == 1):
            return work, step
    return work, step


@torch.no_grad()
def weight_change(before: nn.Module, after: nn.Module, layers: dict[str, NeuronLayer]) -> dict[str, torch.Tensor]:
    """Per neuron ‖Δθ‖ / ‖θ‖ over its parameters (rows of weight, bias, γ, β)."""
    after_layers = neuron_map(after, include_output=True)
    out = {}
    for name, nl in layers.items():
        d2 = torch.zeros(nl.size)
        n2 = torch.zeros(nl.size)
        for p0, p1 in zip(nl.neuron_params(), after_layers[name].neuron_params()):
            d2 += (p1 - p0).flatten(1).pow(2).sum(1).cpu() if p0.dim() > 1 else (p1 - p0).pow(2).cpu()
            n2 += p0.flatten(1).pow(2).sum(1).cpu() if p0.dim() > 1 else p0.pow(2).cpu()
        out[name] = (d2 / n2.clamp_min(1e-12)).sqrt()
    return out


def compute(model: nn.Module, clean: TensorData, layers: dict[str, NeuronLayer] | None = None, **kw) -> NeuronScores:
    layers = layers if layers is not None else neuron_map(model)
    after, _ = unlearned_copy(model, clean, **kw)
    return NeuronScores(NAME, weight_change(model, after, layers))


SCORES.register(
    Score(
        name=NAME,
        label="weight change under clean unlearning (TSBD)",
        explanation=(
            "A copy of the model is made to forget the clean task (gradient ascent on the clean loss until it is "
            "at chance on the clean images, or gives them all one label). Each neuron's score is how far its "
            "weights moved, relative to their size. TSBD found that the neurons that move most when the clean "
            "behaviour is destroyed are also the ones that carry the backdoor; high counts as suspect."
        ),
        low_is_suspect=False,
        compute=lambda model, clean, layers: compute(model, clean, layers),
        needs=frozenset({"clean"}),
        reference="TSBD (Lin et al., NeurIPS 2024)",
        cost="slow",
        curve=False,  # the pruning curve is measured with the fast scores
    )
)
