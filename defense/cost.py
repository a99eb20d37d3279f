"""What a forward pass costs, and how many images an interactive preview can afford.

The cost is counted, not timed: multiply-accumulates of every convolution and linear layer for one
image. A count is the same on every machine and under any load, so a model gets the same preview
images in the CLI, in every session and in the benchmark.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .data import TensorData

# One preview (clean + triggered set) should take well under a second on one CPU core, which does about
# 3e10 multiply-accumulates a second in these convolutions (the bundled PreAct-ResNet-18: 838 images, 0.81 s).
PREVIEW_MACS = float(os.environ.get("BNL_PREVIEW_MACS", 1e10))  # per image set
MIN_PREVIEW_IMAGES = 200


@torch.no_grad()
def macs_per_image(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of the model's Conv2d and Linear layers for one image of ``input_shape``."""
    total = 0

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        per_output = module.in_features if isinstance(module, nn.Linear) else None
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        total += output[0].numel() * per_output

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(count) for m in layers]
    was = model.training
    try:
        model.eval()
        dev = next(model.parameters()).device
        model(torch.zeros(1, *input_shape, device=dev))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return total


def preview_size(macs: int, available: int, budget: float | None = None) -> int:
    """Images per set for a preview: all of them, or as many as ``budget`` MACs allow (at least 200)."""
    budget = PREVIEW_MACS if budget is None else budget
    return min(available, max(MIN_PREVIEW_IMAGES, int(budget // max(macs, 1))))


def preview_sets(
    model: nn.Module, input_shape: tuple[int, ...], test: TensorData, triggered: TensorData
) -> tuple[TensorData, TensorData]:
    """Seeded random subsets of the test and triggered sets, as many images as a preview of this model
    can afford (random, since a folder's test split may come sorted by class)."""
    macs = macs_per_image(model, input_shape)

    def part(d: TensorData) -> TensorData:
        n = preview_size(macs, len(d))
        if n == len(d):
            return d
        return d.subset(torch.randperm(len(d), generator=torch.Generator().manual_seed(0))[:n].sort().values)

    return part(test), part(triggered)
