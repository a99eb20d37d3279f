"""Per-neuron (and per-parameter) scores that say how much each neuron matters.

A neuron is one output channel of a Conv2d or one output unit of a Linear layer. Its
*output* is the channel after the BatchNorm that alone consumes the layer's output, when
there is one (zeroing the conv alone would leave BatchNorm's shift), else the layer's own
output; the pairing follows the data flow (defense/dataflow.py), so a pre-activation
BatchNorm, which acts on a residual sum, is never paired with the conv before it.

Metrics (``METRICS``), each with the direction in which a neuron looks suspect:
- ``benign``: benign salience (BS), −∂L/∂w ⊙ w on clean batches, exponential moving
  average (η = 0.9, bias-corrected). Per neuron it is the sum over the parameters that
  produce the neuron's output, which equals −Σ (∂L/∂y)·y: the first-order estimate of
  how much the clean loss rises when the neuron is zeroed. Low = suspect.
- ``magnitude``: L2 norm of the neuron's weights (the common pruning criterion). Low = suspect.
- ``activation``: mean post-ReLU output on clean data (Fine-Pruning). Low = suspect.
- ``clp``: Channel Lipschitz bound, data-free (CLP): largest singular value of the
  kernel scaled by |γ/σ| of its BatchNorm. High = suspect.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from .data import TensorData
from .dataflow import batchnorm_pairs

METRICS = ("benign", "magnitude", "activation", "clp")
LOW_IS_SUSPECT = {"benign": True, "magnitude": True, "activation": True, "clp": False}
METRIC_LABELS = {
    "benign": "benign salience",
    "magnitude": "weight magnitude",
    "activation": "mean activation",
    "clp": "channel Lipschitz (CLP)",
}


@dataclass
class NeuronLayer:
    """A neuron-holding layer and the module whose output is its neurons' output."""

    name: str
    layer: nn.Module  # Conv2d or Linear
    output: nn.Module  # the following BatchNorm, or the layer itself
    bn: nn.Module | None

    @property
    def size(self) -> int:
        return self.layer.out_channels if isinstance(self.layer, nn.Conv2d) else self.layer.out_features

    def output_params(self) -> list[nn.Parameter]:
        """The parameters whose −g·w sums to −(∂L/∂y)·y for this layer's output y."""
        m = self.bn if self.bn is not None else self.layer
        return [p for p in (m.weight, m.bias) if p is not None]

    def neuron_params(self) -> list[nn.Parameter]:
        """Every parameter tied to single neurons: weight rows, bias, BatchNorm γ and β."""
        params = [p for p in (self.layer.weight, self.layer.bias) if p is not None]
        return params + ([p for p in (self.bn.weight, self.bn.bias) if p is not None] if self.bn is not None else [])


def neuron_map(model: nn.Module, include_output: bool = False) -> dict[str, NeuronLayer]:
    """Neuron layers by name, each paired with the BatchNorm that alone consumes its output.

    The pairing is read from the data flow (``dataflow.batchnorm_pairs``): in a pre-activation
    block the BatchNorm defined after a conv may act on a residual sum, and is then not the
    conv's. The classifier's output layer is left out unless ``include_output``: its units are
    the classes themselves, and zeroing one deletes a class rather than a feature.
    """
    modules = dict(model.named_modules())
    result: dict[str, NeuronLayer] = {}
    for name, bn_name in batchnorm_pairs(model).items():
        m = modules[name]
        bn = modules[bn_name] if bn_name is not None else None
        result[name] = NeuronLayer(name, m, bn if bn is not None else m, bn)
    if not include_output and result:
        last = list(result)[-1]
        if isinstance(result[last].layer, nn.Linear):
            del result[last]
    return result


@dataclass
class NeuronScores:
    """One score per neuron for each layer, with the direction in which it is suspect."""

    metric: str
    layers: dict[str, torch.Tensor]

    @property
    def low_is_suspect(self) -> bool:
        return LOW_IS_SUSPECT[self.metric]

    def suspicion(self) -> dict[str, torch.Tensor]:
        """Scores oriented so that higher = more suspect."""
        return {k: (-v if self.low_is_suspect else v) for k, v in self.layers.items()}

    def normalized(self, mode: str = "minmax") -> dict[str, torch.Tensor]:
        """Per-layer scale in [0, 1] where 0 is the most suspect neuron: 'minmax' or 'rank'."""
        out = {}
        for name, s in self.suspicion().items():
            if mode == "rank":
                r = s.argsort(descending=True).argsort().float()
                out[name] = r / max(len(s) - 1, 1)
            else:
                span = s.max() - s.min()
                out[name] = (s.max() - s) / span if span > 0 else torch.zeros_like(s)
        return out

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"layer": name, "neuron": i, self.metric: float(v)}
                for name, values in self.layers.items()
                for i, v in enumerate(values)
            ]
        )


def _eval_copyless(model: nn.Module):
    """Models are scored in eval mode (BatchNorm uses running statistics, as deployed)."""
    was = model.training
    model.eval()
    return was


class BenignSalience:
    """Running benign salience of every parameter: s ← η·s − (1−η)·g⊙w, bias-corrected.

    Feed it gradients of the clean loss (``update``) after each backward pass; it is used
    both for the warm-up pass over the clean data and during fine-tuning.
    """

    def __init__(self, model: nn.Module, momentum: float = 0.9):
        self.model = model
        self.momentum = momentum
        self.updates = 0
        self.state = {name: torch.zeros_like(p) for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        for name, p in self.model.named_parameters():
            if p.grad is not None:
                self.state[name].mul_(self.momentum).add_(p.grad * p, alpha=-(1 - self.momentum))

    def per_parameter(self) -> dict[str, torch.Tensor]:
        correction = 1 - self.momentum ** max(self.updates, 1)
        return {name: s / correction for name, s in self.state.items()}

    def per_neuron(self, layers: dict[str, NeuronLayer]) -> NeuronScores:
        per_param = self.per_parameter()
        names = {id(p): n for n, p in self.model.named_parameters()}
        scores = {}
        for lname, nl in layers.items():
            total = torch.zeros(nl.size, device=next(self.model.parameters()).device)
            for p in nl.output_params():
                s = per_param[names[id(p)]]
                total += s.flatten(1).sum(1) if s.dim() > 1 else s
            scores[lname] = total.detach().cpu()
        return NeuronScores("benign", scores)


def benign_salience(
    model: nn.Module,
    clean: TensorData,
    batch_size: int = 64,
    momentum: float = 0.9,
    layers: dict[str, NeuronLayer] | None = None,
) -> tuple[NeuronScores, BenignSalience]:
    """A warm-up pass of benign salience over the clean data (eval mode, no weight change)."""
    layers = layers if layers is not None else neuron_map(model)
    was = _eval_copyless(model)
    dev = next(model.parameters()).device
    tracker = BenignSalience(model, momentum)
    loss_fn = nn.CrossEntropyLoss()
    for xb, yb in clean.batches(batch_size):
        model.zero_grad(set_to_none=True)
        loss_fn(model(xb.to(dev)), yb.to(dev)).backward()
        tracker.update()
    model.zero_grad(set_to_none=True)
    model.train(was)
    return tracker.per_neuron(layers), tracker


def magnitude(model: nn.Module, layers: dict[str, NeuronLayer] | None = None) -> NeuronScores:
    layers = layers if layers is not None else neuron_map(model)
    return NeuronScores(
        "magnitude", {n: nl.layer.weight.detach().flatten(1).norm(dim=1).cpu() for n, nl in layers.items()}
    )


@torch.no_grad()
def activation(
    model: nn.Module, clean: TensorData, layers: dict[str, NeuronLayer] | None = None, batch_size: int = 500
) -> NeuronScores:
    """Mean post-ReLU output of each neuron over the clean data."""
    layers = layers if layers is not None else neuron_map(model)
    sums = {n: 0.0 for n in layers}
    hooks = []
    for name, nl in layers.items():

        def hook(_m, _inp, out, name=name):
            a = torch.relu(out)
            sums[name] = sums[name] + (a.mean(dim=(2, 3)) if a.dim() == 4 else a).sum(0)

        hooks.append(nl.output.register_forward_hook(hook))
    was = _eval_copyless(model)
    dev = next(model.parameters()).device
    try:
        for xb, _ in clean.batches(batch_size):
            model(xb.to(dev))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return NeuronScores("activation", {n: (s / len(clean)).cpu() for n, s in sums.items()})


@torch.no_grad()
def clp(model: nn.Module, layers: dict[str, NeuronLayer] | None = None) -> NeuronScores:
    """CLP's upper bound of each channel's Lipschitz constant (data-free)."""
    layers = layers if layers is not None else neuron_map(model)
    scores = {}
    for name, nl in layers.items():
        w = nl.layer.weight.detach()
        if nl.bn is not None:
            scale = (nl.bn.weight / (nl.bn.running_var + nl.bn.eps).sqrt()).abs()
            w = w * scale.view(-1, *([1] * (w.dim() - 1)))
        if w.dim() == 4:  # [out, in, k, k] → per channel an [in, k·k] matrix
            scores[name] = torch.linalg.matrix_norm(w.flatten(2), ord=2).cpu()
        else:
            scores[name] = w.norm(dim=1).cpu()
    return NeuronScores("clp", scores)


def compute(
    metric: str, model: nn.Module, clean: TensorData | None = None, layers: dict[str, NeuronLayer] | None = None
) -> NeuronScores:
    """Per-neuron scores of one metric; ``clean`` is needed for the data-driven ones."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}': expected one of {', '.join(METRICS)}")
    layers = layers if layers is not None else neuron_map(model)
    if metric == "benign":
        return benign_salience(model, clean, layers=layers)[0]
    if metric == "activation":
        return activation(model, clean, layers)
    if metric == "magnitude":
        return magnitude(model, layers)
    return clp(model, layers)


def scores_frame(scores: list[NeuronScores]) -> pd.DataFrame:
    """All metrics side by side: one row per neuron (layer, neuron, one column per metric)."""
    frame = None
    for s in scores:
        f = s.to_frame()
        frame = f if frame is None else frame.merge(f, on=["layer", "neuron"])
    return frame
