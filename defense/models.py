"""Architectures by name, and the layers whose output units are the "neurons" we score.

Every model takes pixels in [0, 1]; normalization is its first step (non-persistent
buffers, so the state dict holds only learned weights). A neuron is one output channel
of a Conv2d or one output unit of a Linear layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

DEFAULT_ARCH = "small_cnn"
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def wrap(builder):
        _REGISTRY[name] = builder
        return builder

    return wrap


def architectures() -> list[str]:
    return sorted(_REGISTRY)


class Normalized(nn.Module):
    """(x - mean) / std, then the wrapped network."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


@register("small_cnn")
def small_cnn(num_classes: int = 10, input_shape=(1, 28, 28), width: int = 16, hidden: int = 64) -> nn.Module:
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


@register("resnet18")
def resnet18(num_classes: int = 10, input_shape=(3, 32, 32)) -> nn.Module:
    """torchvision's ResNet-18 for small images: 3x3 stem, stride 1, no max-pool."""
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def build(arch: str, num_classes: int, input_shape, mean, std, **kwargs) -> Normalized:
    if arch not in _REGISTRY:
        raise KeyError(f"unknown architecture '{arch}': expected one of {', '.join(architectures())}")
    return Normalized(_REGISTRY[arch](num_classes=num_classes, input_shape=tuple(input_shape), **kwargs), mean, std)


def neuron_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv2d and Linear layers by qualified name, in forward order of definition."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def neuron_count(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


from . import preact as _preact  # noqa: E402,F401 - registers preactresnet18 and vgg11
