"""ANP as a defense: Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021), published settings.

Every hidden neuron gets a mask m ∈ [0, 1] (start 1) on its weight part and the adversary
perturbs it multiplicatively: the neuron's output γ·x̂ + β (or W·x + b without BatchNorm)
becomes (m + δ)·γ·x̂ + (1 + ξ)·β with |δ|, |ξ| ≤ ε. Each iteration the adversary takes one
signed-gradient step of size ε from a uniform random start to raise the clean loss, then the
masks take one SGD step (lr 0.2, momentum 0.9) on α·CE(unperturbed) + (1 − α)·CE(perturbed)
and are clipped to [0, 1]. Neurons whose mask ends ≤ 0.2 are pruned; no fine-tuning.
Published: ε = 0.4, α = 0.2, 2,000 iterations of 128 images out of 500. Scaled down for two
CPU cores: 500 iterations, over the defender's 200 images (5% of mnist5k's training set).
The model is run in eval mode (BatchNorm on its running statistics; the reference trains the
masks in train mode) so that learning the masks changes nothing in the model.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .data import TensorData
from .masks import frozen
from .neurons import NeuronLayer, NeuronMask
from .runtime import step_done

EPS = 0.4
ALPHA = 0.2
MASK_LR = 0.2
BATCH = 128
ITERATIONS = 500  # published 2,000 (see the module docstring)
PRUNE_AT = 0.2


def _bias_of(nl: NeuronLayer) -> torch.Tensor | None:
    m = nl.bn if nl.bn is not None else nl.layer
    return m.bias


@contextmanager
def _perturbed(layers: dict[str, NeuronLayer], mask, delta, xi, noisy: bool):
    """Neuron outputs become (m + δ)·(y − b) + (1 + ξ)·b inside the block (b: the output's bias)."""
    hooks = []
    for name, nl in layers.items():
        bias = _bias_of(nl)

        def hook(_m, _inp, out, name=name, bias=bias):
            shape = (1, -1, 1, 1) if out.dim() == 4 else (1, -1)
            scale = mask[name] + delta[name] if noisy else mask[name]
            b = bias.detach().view(shape) if bias is not None else torch.zeros((), device=out.device)
            shift = (1 + xi[name]).view(shape) * b if noisy else b
            return scale.view(shape) * (out - b) + shift

        hooks.append(nl.output.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def anp_mask_values(
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
    """The learned mask of every neuron (the model is left as it was)."""
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    mask = {n: torch.ones(nl.size, device=dev, requires_grad=True) for n, nl in layers.items()}
    delta = {n: torch.zeros(nl.size, device=dev, requires_grad=True) for n, nl in layers.items()}
    xi = {n: torch.zeros(nl.size, device=dev, requires_grad=True) for n, nl in layers.items()}
    noise = list(delta.values()) + list(xi.values())
    opt = torch.optim.SGD(list(mask.values()), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    with frozen(model):
        step = 0
        while step < iterations:
            for xb, yb in clean.batches(batch_size, generator=gen):
                if step >= iterations:
                    break
                xb, yb = xb.to(dev), yb.to(dev)
                if eps > 0:
                    with torch.no_grad():
                        for t in noise:
                            t.copy_(((torch.rand(t.shape, generator=gen) * 2 - 1) * eps).to(dev))
                    with _perturbed(layers, mask, delta, xi, noisy=True):
                        grads = torch.autograd.grad(loss_fn(model(xb), yb), noise)
                    with torch.no_grad():
                        for t, g in zip(noise, grads):
                            t.add_(eps * g.sign()).clamp_(-eps, eps)
                    with _perturbed(layers, mask, delta, xi, noisy=True):
                        robust = loss_fn(model(xb), yb)
                else:
                    robust = torch.zeros((), device=dev)
                with _perturbed(layers, mask, delta, xi, noisy=False):
                    natural = loss_fn(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                (alpha * natural + (1 - alpha) * robust).backward(inputs=list(mask.values()))
                opt.step()
                with torch.no_grad():
                    for m in mask.values():
                        m.clamp_(0, 1)
                step += 1
                step_done()
    return {n: m.detach().cpu() for n, m in mask.items()}


def anp_prune_mask(
    model: nn.Module, clean: TensorData, layers: dict[str, NeuronLayer], seed: int = 0, **kw
) -> NeuronMask:
    """ANP's pruning: every neuron whose learned mask is ≤ 0.2."""
    return {n: v <= PRUNE_AT for n, v in anp_mask_values(model, clean, layers, seed=seed, **kw).items()}
