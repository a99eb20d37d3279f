"""A second ground truth of infected neurons: trigger-activated change (TAC).

TAC (named in CLP, Zheng et al. 2022, and used by TSBD to judge identification): per
neuron, the mean over test images x of how far its output moves when the trigger is
added, ‖a(x') − a(x)‖ with a the post-ReLU output and x' the triggered copy of x. For
conv channels the norm is the root mean square over positions, and each layer's TAC is divided by
the layer's mean clean output (RMS over positions, averaged over its neurons): layers
differ in scale (the first linear layer's outputs are several times a conv channel's),
and unscaled, the top 10% all fell in that one layer on every bundled model. It needs only forward passes, asks nothing
of the loss, and reads the trigger's effect inside the network rather than at the output,
so it is a truth defined independently of the ablation one (``metrics.backdoor_ground_truth``).
"""

from __future__ import annotations

import torch
from torch import nn

from . import metrics
from .data import TensorData
from .neurons import NeuronLayer
from .targets import Target, as_target


@torch.no_grad()
def _outputs(model: nn.Module, layers: dict[str, NeuronLayer], x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        nl.output.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, torch.relu(out)))
        for name, nl in layers.items()
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def trigger_activated_change(
    model: nn.Module,
    layers: dict[str, NeuronLayer],
    clean: torch.Tensor,
    triggered: torch.Tensor,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Per layer, each neuron's mean change of output between paired clean and triggered images,
    in units of the layer's mean clean output."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    sums = {n: torch.zeros(nl.size) for n, nl in layers.items()}
    scale = {n: torch.zeros(nl.size) for n, nl in layers.items()}
    try:
        for start in range(0, len(clean), batch_size):
            a = _outputs(model, layers, clean[start : start + batch_size].to(dev))
            b = _outputs(model, layers, triggered[start : start + batch_size].to(dev))
            for n in layers:
                d = (b[n] - a[n]).flatten(2) if b[n].dim() == 4 else (b[n] - a[n]).unsqueeze(2)
                sums[n] += d.pow(2).mean(2).sqrt().sum(0).cpu()
                c = a[n].flatten(2) if a[n].dim() == 4 else a[n].unsqueeze(2)
                scale[n] += c.pow(2).mean(2).sqrt().sum(0).cpu()
    finally:
        model.train(was)
    return {n: s / scale[n].mean().clamp_min(1e-12) for n, s in sums.items()}


def tac_truth(
    model: nn.Module,
    layers: dict[str, NeuronLayer],
    test: TensorData,
    trigger,
    target: int | Target,
    infected_fraction: float = 0.1,
    max_images: int = 256,
) -> dict:
    """{'tac': {layer: tensor}, 'infected': {layer: bool tensor}}: the top ``infected_fraction`` by TAC."""
    keep = as_target(target).flippable(test.y)
    x = test.x[keep][:max_images]
    tac = trigger_activated_change(model, layers, x, trigger.apply(x))
    return {"tac": tac, "infected": metrics.top_fraction(tac, infected_fraction)}


def agreement(ablation: dict, tac: dict) -> dict[str, float]:
    """How far the two truths agree: AUC of TAC against the ablation labels, and the share of
    the ablation-infected neurons that TAC also labels infected (top-k overlap). A sampled ablation
    truth is compared on its measured neurons only."""
    names = list(ablation["infected"])
    a = torch.cat([ablation["infected"][n] for n in names])
    t = torch.cat([tac["infected"][n] for n in names])
    v = torch.cat([tac["tac"][n] for n in names])
    if "measured" in ablation:
        keep = torch.cat([ablation["measured"][n] for n in names])
        a, t, v = a[keep], t[keep], v[keep]
    return {
        "tac_auc_vs_ablation": metrics.roc_auc(v, a),
        "top_k_overlap": float((a & t).sum()) / max(int(a.sum()), 1),
        "infected_ablation": int(a.sum()),
        "infected_tac": int(t.sum()),
    }
