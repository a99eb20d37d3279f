"""Where a backdoor sends a triggered image: one label for all, or each label to the next.

All-to-one (one target label, the common case) and all-to-all (label y goes to (y + 1) mod K,
BackdoorBench's ``all2all``). In meta.json the attack's ``target_label`` is the label, or the
string ``"all-to-all"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ALL_TO_ALL = "all-to-all"
ALL_TO_ALL_NAMES = (ALL_TO_ALL, "all", "all2all")  # what the command line and Target.parse accept for it


@dataclass(frozen=True)
class Target:
    label: int | None  # None: all-to-all
    num_classes: int = 0  # needed for all-to-all only

    def __post_init__(self):
        if self.label is None and self.num_classes < 2:
            raise ValueError("an all-to-all target needs the number of classes (at least 2)")

    @classmethod
    def parse(cls, value, num_classes: int) -> Target:
        """From a meta.json / command-line value: a class index, or 'all-to-all' (also 'all', 'all2all')."""
        if isinstance(value, Target):
            value = value.meta_value()
        if isinstance(value, str) and value.strip().lower() in ALL_TO_ALL_NAMES:
            return cls(None, num_classes)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < max(num_classes, 1):
            raise ValueError(f"the target must be a class in [0, {num_classes - 1}] or '{ALL_TO_ALL}', found {value!r}")
        return cls(value, num_classes)

    @property
    def all_to_all(self) -> bool:
        return self.label is None

    def labels_for(self, y: torch.Tensor) -> torch.Tensor:
        """The label the backdoor wants for images of true label ``y``."""
        if self.all_to_all:
            return (y + 1) % self.num_classes
        return torch.full_like(y, self.label)

    def flippable(self, y: torch.Tensor) -> torch.Tensor:
        """Images the attack can flip: those whose true label is not already the one it wants."""
        return self.labels_for(y) != y

    def meta_value(self) -> int | str:
        return ALL_TO_ALL if self.all_to_all else int(self.label)

    def __str__(self) -> str:
        return "the next label (all-to-all: y → y + 1)" if self.all_to_all else f"label {self.label}"


def as_target(target: int | Target, num_classes: int = 0) -> Target:
    return target if isinstance(target, Target) else Target(int(target), num_classes)
