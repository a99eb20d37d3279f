"""Learnable per-neuron multiplicative masks on neuron outputs (RNP's recovery step).

Each neuron's output y (after its BatchNorm, see ``neurons.neuron_map``) is replaced by m·y,
where ``m`` is a mask in [0, 1] (1 = untouched). Forward hooks do it, so the model's weights are
never touched; the model is run in eval mode (BatchNorm on its running statistics). ANP's masks,
with their adversary on the weight part and the bias, are in ``anp_prune``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .neurons import NeuronLayer


class NeuronMasks:
    """A mask tensor per layer, applied inside ``active()``."""

    def __init__(self, layers: dict[str, NeuronLayer], device: torch.device | None = None):
        self.layers = layers
        self.mask = {n: torch.ones(nl.size, device=device, requires_grad=True) for n, nl in layers.items()}

    def mask_params(self) -> list[torch.Tensor]:
        return list(self.mask.values())

    @torch.no_grad()
    def clip_mask(self) -> None:
        for m in self.mask.values():
            m.clamp_(0, 1)

    @contextmanager
    def active(self):
        hooks = []
        for name, nl in self.layers.items():

            def hook(_mod, _inp, out, name=name):
                scale = self.mask[name]
                return out * (scale.view(1, -1, 1, 1) if out.dim() == 4 else scale.view(1, -1))

            hooks.append(nl.output.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    def values(self) -> dict[str, torch.Tensor]:
        return {n: m.detach().cpu().clone() for n, m in self.mask.items()}


@contextmanager
def frozen(model: nn.Module):
    """Eval mode and no weight gradients inside the block; both restored afterwards."""
    was = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was)
