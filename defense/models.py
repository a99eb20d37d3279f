"""Architectures by name (entries of ``registry.ARCHITECTURES``), and building them.

Every model takes pixels in [0, 1]; normalization is its first step (non-persistent
buffers, so the state dict holds only learned weights). Adding an architecture is one
function decorated with ``@register(name, label, explanation)`` here or in any imported module.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .registry import ARCHITECTURES, Architecture

DEFAULT_ARCH = "small_cnn"


def count_parameters(arch: str, num_classes: int, input_shape: Sequence[int], **kwargs) -> int:
    """Parameters of ``arch`` built for these shapes, counted on torch's 'meta' device (no memory, no arithmetic)."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = ARCHITECTURES[arch].build(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)
    return sum(p.numel() for p in net.parameters())


def register(
    name: str, label: str = "", explanation: str = "", kwargs: tuple[str, ...] | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder(num_classes, input_shape, **kwargs) -> nn.Module`` as architecture ``name``.

    ``kwargs``: the keyword arguments meta.json's arch_kwargs may set; by default every parameter of the
    builder after num_classes and input_shape.
    """

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        accepted = kwargs
        if accepted is None:
            accepted = tuple(
                p for p in inspect.signature(builder).parameters if p not in ("num_classes", "input_shape")
            )
        ARCHITECTURES.register(
            Architecture(
                name,
                label or name,
                explanation or (inspect.getdoc(builder) or "").split("\n\n")[0],
                builder,
                kwargs=accepted,
                param_count=lambda num_classes, input_shape, **kw: count_parameters(
                    name, num_classes, input_shape, **kw
                ),
            )
        )
        return builder

    return wrap


def architectures() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(ARCHITECTURES.names())


class Normalized(nn.Module):
    """(x - mean) / std, then the wrapped network."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


@register("small_cnn", "small CNN")
def small_cnn(
    num_classes: int = 10, input_shape: Sequence[int] = (1, 28, 28), width: int = 16, hidden: int = 64
) -> nn.Module:
    """Two conv blocks with BatchNorm and a two-layer head: quick on two CPU cores."""
    channels, height, w = input_shape
    return _SmallCNN(num_classes, channels, height, w, width, hidden)


class _SmallCNN(nn.Module):
    def __init__(self, num_classes, channels, height, width_px, width, hidden):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(2 * width * (height // 4) * (width_px // 4), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


@register("resnet18", "ResNet-18")
def resnet18(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
    """torchvision's ResNet-18 for small images: 3x3 stem, stride 1, no max-pool."""
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def build(
    arch: str, num_classes: int, input_shape: Sequence[int], mean: list[float], std: list[float], **kwargs
) -> Normalized:
    """Architecture ``arch`` behind its input normalization (KeyError naming the known ones if unknown)."""
    builder = ARCHITECTURES[arch].build
    return Normalized(builder(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs), mean, std)


# research-scale architectures live in their own module (defense/preact.py)
from .preact import preactresnet18, vgg11  # noqa: E402

register("preactresnet18", "PreAct-ResNet-18 (BackdoorBench)")(preactresnet18)
register("vgg11", "VGG-11 with BatchNorm")(vgg11)
