"""One registry per concept: scores, defenses, attacks and architectures.

Each entry is a small frozen record (name, label, one-paragraph explanation, what data it
needs, the function). The CLI's choices, the app's selectors and help texts, the benchmark's
loops and the README's tables all read from here, so adding a score or a defense is one
entry (usually one new file that calls ``SCORES.register``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Score:
    """A per-neuron score.

    ``compute(model, clean, layers) -> NeuronScores``; ``clean`` is the defender's clean
    TensorData (None for data-free scores); ``layers`` the neuron map of ``model``.
    ``low_is_suspect``: the direction in which a neuron looks infected.
    """

    name: str
    label: str
    explanation: str
    low_is_suspect: bool
    compute: Callable[..., Any]
    needs: frozenset[str] = frozenset({"clean"})  # subset of {"clean"}; empty = data-free
    reference: str = ""  # where it comes from (paper), for the docs
    curve: bool = True  # drawn on the pruning curve by default
    cost: str = "fast"  # 'fast' (seconds) or 'slow' (tens of seconds or more on CPU)


@dataclass(frozen=True)
class Defense:
    """A purification defense.

    ``build(model, clean, test, triggered, config, scores) -> Purification`` returns a
    ready-to-iterate run; ``marking`` is (score name, regularizer) for defenses that mark
    neurons with a score and can take the Threshold page's mask, else None.
    """

    name: str
    label: str
    explanation: str
    build: Callable[..., Any]
    marking: tuple[str, str] | None = None
    needs: frozenset[str] = frozenset({"clean"})
    paper: bool = False  # the paper's own method, as published
    recommended: bool = False  # what `purify` runs with no options
    distill: bool = False  # uses self-distillation from the original model


@dataclass(frozen=True)
class Attack:
    """A kind of trigger: ``make(input_shape, seed, **params) -> Trigger``; ``params`` the names it takes."""

    name: str
    label: str
    explanation: str
    make: Callable[..., Any]
    params: tuple[str, ...] = ()
    from_meta: Callable[..., Any] | None = None  # (params, tensors, input_shape) -> Trigger


@dataclass(frozen=True)
class Architecture:
    """A model builder: ``build(num_classes, input_shape, **kwargs) -> nn.Module``."""

    name: str
    label: str
    explanation: str
    build: Callable[..., Any]
    kwargs: tuple[str, ...] = ()  # the keyword arguments it accepts (meta.json arch_kwargs)
    param_count: Callable[..., int] | None = None  # (num_classes, input_shape, **kwargs) -> parameters, before building


@dataclass
class Registry(Generic[T]):
    """Entries of one kind by name, in registration order."""

    kind: str
    _items: dict[str, T] = field(default_factory=dict)

    def register(self, item: T) -> T:
        name = item.name  # type: ignore[attr-defined]
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a toy entry clean up with this)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} '{name}': expected one of {', '.join(self._items)}") from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return list(self._items)


SCORES: Registry[Score] = Registry("score")
DEFENSES: Registry[Defense] = Registry("defense")
ATTACKS: Registry[Attack] = Registry("attack")
ARCHITECTURES: Registry[Architecture] = Registry("architecture")
