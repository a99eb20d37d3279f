"""A rebound guard for purification: keep the checkpoint that looks least backdoored on clean data alone.

Fine-tuning can remove a backdoor and then let it grow back as the learning rate decays
(docs/METHOD.md). The defender cannot measure the attack success rate, so the guard scores
each checkpoint with a signal that needs only the clean subset: the clean loss under an
*adversarial neuron perturbation* (ANP's observation, Wu & Wang 2021: a backdoored network
breaks under small multiplicative perturbations of its neurons, a clean one does not).
Every neuron's output y becomes (1 + δ)·y with |δ| ≤ ε; δ starts at a seeded random point
and takes one signed-gradient step that raises the clean loss. The same starting point is
used for every checkpoint of a run, so their sensitivities are comparable.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .data import TensorData
from .neurons import NeuronLayer


def neuron_sensitivity(
    model: nn.Module,
    layers: dict[str, NeuronLayer],
    clean: TensorData,
    eps: float = 0.4,
    seed: int = 0,
    max_images: int = 512,
) -> float:
    """Clean cross-entropy after a one-step adversarial neuron perturbation of size ε (eval mode)."""
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    delta = {
        n: ((torch.rand(nl.size, generator=gen) * 2 - 1) * eps).to(dev).requires_grad_(True) for n, nl in layers.items()
    }
    x, y = clean.x[:max_images].to(dev), clean.y[:max_images].to(dev)
    loss_fn = nn.CrossEntropyLoss()
    was = model.training
    model.eval()
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    hooks = []
    for name, nl in layers.items():

        def hook(_m, _inp, out, name=name):
            d = 1 + delta[name]
            return out * (d.view(1, -1, 1, 1) if out.dim() == 4 else d.view(1, -1))

        hooks.append(nl.output.register_forward_hook(hook))
    try:
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, list(delta.values()))
        with torch.no_grad():
            for d, g in zip(delta.values(), grads):
                d.add_(eps * g.sign()).clamp_(-eps, eps)
            value = float(loss_fn(model(x), y))
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was)
    return value


class CheckpointGuard:
    """Keeps the state of the checkpoint with the lowest criterion seen so far."""

    def __init__(self):
        self.best_value = float("inf")
        self.best_step: int | None = None
        self.best_state: dict | None = None

    def offer(self, model: nn.Module, step: int, value: float) -> bool:
        """Record ``model`` at ``step`` if ``value`` is the lowest yet (ties keep the earlier one)."""
        if not value < self.best_value:
            return False
        self.best_value, self.best_step = value, step
        self.best_state = copy.deepcopy(model.state_dict())
        return True

    def restore(self, model: nn.Module) -> int | None:
        """Load the best checkpoint into ``model``; returns its step (None if nothing was offered)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return self.best_step
