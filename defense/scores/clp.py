"""Channel Lipschitz bound, data-free: CLP's score."""

from __future__ import annotations

import torch
from torch import nn

from ..neurons import NeuronLayer, NeuronScores
from ..registry import SCORES, Score


@torch.no_grad()
def clp(model: nn.Module, layers: dict[str, NeuronLayer]) -> NeuronScores:
    """Largest singular value of each channel's kernel, scaled by |γ/σ| of its BatchNorm."""
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


SCORES.register(
    Score(
        name="clp",
        label="channel Lipschitz (CLP)",
        explanation=(
            "An upper bound on how much the channel can amplify a change of its input: the largest singular "
            "value of its kernel, scaled by its BatchNorm's |γ/σ|, read from the weights alone (no data). CLP "
            "finds that triggers are carried by channels with an unusually high bound, so high counts as suspect."
        ),
        low_is_suspect=False,
        compute=lambda model, clean, layers: clp(model, layers),
        needs=frozenset(),
        reference="CLP (Zheng et al. 2022)",
        curve=False,
    )
)
