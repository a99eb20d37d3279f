"""Neurons: which modules hold them, their scores, and zeroing them.

A neuron is one output channel of a Conv2d or one output unit of a Linear layer. Its
*output* is the channel after the BatchNorm that alone consumes the layer's output, when
there is one (zeroing the conv alone would leave BatchNorm's shift), else the layer's own
output; the pairing follows the data flow (defense/dataflow.py), so a pre-activation
BatchNorm, which acts on a residual sum, is never paired with the conv before it.
A neuron mask is ``{layer name: bool tensor}``, True = marked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from .registry import SCORES

NeuronMask = dict[str, torch.Tensor]


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
    from .dataflow import batchnorm_pairs

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
    """One score per neuron for each layer; ``metric`` is the score's registry name (defense/scores/)."""

    metric: str
    layers: dict[str, torch.Tensor]
    details: dict = field(default_factory=dict)  # what a score found besides the values (inversion: the trigger)

    @property
    def low_is_suspect(self) -> bool:
        """The direction in which a neuron looks infected, as the score's registry entry says."""
        return SCORES[self.metric].low_is_suspect

    def suspicion(self) -> dict[str, torch.Tensor]:
        """Scores oriented so that higher = more suspect."""
        low = self.low_is_suspect
        return {k: (-v if low else v) for k, v in self.layers.items()}

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


def scores_frame(scores: list[NeuronScores]) -> pd.DataFrame:
    """Several scores side by side: one row per neuron (layer, neuron, one column per score)."""
    frame = None
    for s in scores:
        f = s.to_frame()
        frame = f if frame is None else frame.merge(f, on=["layer", "neuron"])
    return frame


def marked_count(mask: NeuronMask) -> int:
    return int(sum(int(m.sum()) for m in mask.values()))


@contextmanager
def neuron_masking(layers: dict[str, NeuronLayer], mask: NeuronMask) -> Iterator[None]:
    """Within the block, marked neurons output zero (forward hooks; the weights are untouched)."""
    hooks = []
    for name, m in mask.items():
        if name not in layers or not m.any():
            continue
        keep = (~m).float()

        def hook(_mod, _inp, out, keep=keep):
            k = keep.to(out.device)
            return out * (k.view(1, -1, 1, 1) if out.dim() == 4 else k.view(1, -1))

        hooks.append(layers[name].output.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def prune(layers: dict[str, NeuronLayer], mask: NeuronMask) -> None:
    """Zero the marked neurons' parameters in place (weight rows, bias, BatchNorm γ and β)."""
    for name, m in mask.items():
        for p in layers[name].neuron_params():
            p[m.to(p.device)] = 0
