"""Research-scale architectures: BackdoorBench's PreAct-ResNet-18, and a VGG-11 with BatchNorm.

``preactresnet18`` reproduces BackdoorBench's ``PreActResNet18`` module for module (same
attribute names, same forward), so one of its state dicts loads into ``Normalized.net``
unchanged. ``width`` scales every stage (64 = BackdoorBench; 16 keeps two CPU cores
interactive) and ``in_channels`` follows the input shape.

Pre-activation blocks put each BatchNorm *before* its conv: ``bn1`` acts on the block's
input (the residual stream), ``bn2`` on ``conv1``'s output alone. Which BatchNorm belongs
to which conv is read from the data flow, not from the module order (defense/dataflow.py).
The builders are registered in defense/models.py.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    """BackdoorBench's PreActBlock: relu(bn1) → conv1 → relu(bn2) → conv2, plus the shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != self.expansion * planes:
            # only where the shape changes, so the state dict keys match BackdoorBench's
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut  # BackdoorBench adds in place; out-of-place is the same sum and safe for hooks


class PreActResNet(nn.Module):
    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes: int = 10, width: int = 64, in_channels: int = 3):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(4 * width, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(8 * width, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(8 * width * PreActBlock.expansion, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (num_blocks - 1):
            blocks.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes * PreActBlock.expansion
        return nn.Sequential(*blocks)

    def forward(self, x):
        out = self.conv1(x)
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = self.avgpool(out)
        out = out.view(out.size(0), -1)
        return self.linear(out)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise ValueError(f"{name} must be an integer in [1, 1024], got {value!r}")
    return value


def preactresnet18(num_classes: int = 10, input_shape=(3, 32, 32), width: int = 64, in_channels: int | None = None):
    """BackdoorBench's PreAct-ResNet-18 (width 64); ``in_channels`` defaults to the input's channels."""
    channels = input_shape[0] if in_channels is None else in_channels
    if channels != input_shape[0]:
        raise ValueError(f"in_channels {channels} does not match the input shape {list(input_shape)}")
    return PreActResNet((2, 2, 2, 2), num_classes, _positive("width", width), _positive("in_channels", channels))


VGG11 = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")  # multiples of width/64 (VGG-11: 64 ... 512)


class VGG(nn.Module):
    """VGG-11 with BatchNorm after every conv; ceil-mode pooling so 28×28 inputs work too."""

    def __init__(self, num_classes: int = 10, width: int = 64, in_channels: int = 3, config=VGG11):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                out = item * width
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=False)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def vgg11(num_classes: int = 10, input_shape=(3, 32, 32), width: int = 64):
    """VGG-11-BN with a global-average-pooled linear head; ``width`` 64 is the standard VGG-11."""
    return VGG(num_classes, _positive("width", width), input_shape[0])
