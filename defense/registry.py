"""One registry per concept: scores, defenses, attacks and architectures.

Each entry is a small frozen record (name, label, one-paragraph explanation, what data it
needs, the function). The CLI's choices, the app's selectors and help texts, the benchmark's
loops and the README's tables all read from here, so adding a score or a defense is one
entry (usually one new file that calls ``SCORES.register``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Score:
    """A per-neuron score (one module under defense/scores/).

    ``compute(model, clean, layers) -> NeuronScores``; ``clean`` is the defender's clean
    TensorData (None for data-free scores); ``layers`` the neuron map of ``model``.
    ``low_is_suspect``: the direction in which a neuron looks infected.
    ``salience.compute(name, model, clean, layers)`` runs one by name.
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
    """A purification defense (defense/baselines.py).

    ``build(model, clean, test, triggered, config, scores, mask) -> Purification`` returns a
    ready-to-iterate run (``baselines.make(name, ...)`` calls it); ``scores`` are precomputed
    scores of the original model or None, ``mask`` a mask chosen elsewhere or None.
    ``marking`` is (score name, regularizer) for defenses that mark neurons with a score and
    can take the Threshold page's mask, else None.
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
    defaults: dict = field(default_factory=dict)  # its own values of settings a caller left at PurifyConfig's


@dataclass(frozen=True)
class Attack:
    """A kind of trigger (defense/attacks.py).

    ``make(input_shape, seed, params, trigger_file) -> Trigger`` builds a new one (``params``: a dict whose
    keys are already known to be among ``params``; values still to be checked); ``from_meta(params, tensors,
    input_shape) -> Trigger`` rebuilds the one a bundle describes. ``attacks.make_trigger`` and
    ``attacks.trigger_from_meta`` dispatch to them.
    """

    name: str
    label: str
    explanation: str
    make: Callable[..., Any]
    params: tuple[str, ...] = ()
    from_meta: Callable[..., Any] | None = None  # (params, tensors, input_shape) -> Trigger
    describe: Callable[[Any], str] | None = None  # (trigger) -> one line for people, when the trigger has none


@dataclass(frozen=True)
class Architecture:
    """A model builder: ``build(num_classes, input_shape, **kwargs) -> nn.Module`` (``models.register``)."""

    name: str
    label: str
    explanation: str
    build: Callable[..., Any]
    kwargs: tuple[str, ...] = ()  # the keyword arguments it accepts (meta.json arch_kwargs)
    param_count: Callable[..., int] | None = None  # (num_classes, input_shape, **kwargs) -> parameters, before building


@dataclass
class Registry(Generic[T]):
    """Entries of one kind by name, in registration order.

    ``source`` names the module (or package) whose import registers the built-in entries; it is
    imported on the first lookup, so a caller never sees a half-filled registry and this module
    imports nothing of the library (no import cycles through it).
    """

    kind: str
    source: str = ""
    _items: dict[str, T] = field(default_factory=dict)
    _loaded: bool = False

    def _load(self) -> None:
        if self._loaded or not self.source:
            return
        self._loaded = True  # before the import: the source registers into this registry while it loads
        try:
            importlib.import_module(self.source)
        except BaseException:
            self._loaded = False
            raise

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
        self._load()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise KeyError(f"unknown {self.kind} {name!r}: expected one of {', '.join(self._items)}") from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self._load()
        try:
            return name in self._items
        except TypeError:  # an unhashable value read from a file is simply not a name
            return False

    def __iter__(self) -> Iterator[T]:
        self._load()
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def names(self) -> list[str]:
        self._load()
        return list(self._items)


SCORES: Registry[Score] = Registry("score", "defense.scores")
DEFENSES: Registry[Defense] = Registry("defense", "defense.baselines")
ATTACKS: Registry[Attack] = Registry("attack", "defense.attacks")
ARCHITECTURES: Registry[Architecture] = Registry("architecture", "defense.models")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown_tables() -> str:
    """Every registry as a markdown table (the README's block between the registry markers)."""
    lines = ["| score | what it measures | suspect when | needs |", "|---|---|---|---|"]
    for s in SCORES:
        needs = ", ".join(sorted(s.needs)) + " data" if s.needs else "weights only"
        lines.append(f"| `{s.name}` | {_cell(s.explanation)} | {'low' if s.low_is_suspect else 'high'} | {needs} |")
    lines += ["", "| defense | what it does | marks with | notes |", "|---|---|---|---|"]
    for d in DEFENSES:
        marks = f"`{d.marking[0]}`, {d.marking[1]}" if d.marking else "—"
        notes = [n for n, on in (("recommended", d.recommended), ("paper", d.paper), ("distills", d.distill)) if on]
        notes += [] if d.needs else ["data-free"]
        lines.append(f"| `{d.name}` | {_cell(d.label)} | {marks} | {', '.join(notes)} |")
    lines += ["", "| attack | trigger | parameters |", "|---|---|---|"]
    for a in ATTACKS:
        lines.append(f"| `{a.name}` | {_cell(a.explanation)} | {', '.join(a.params) or '—'} |")
    lines += ["", "| architecture | what it is | arch_kwargs |", "|---|---|---|"]
    for m in ARCHITECTURES:
        lines.append(f"| `{m.name}` | {_cell(m.explanation)} | {', '.join(m.kwargs) or '—'} |")
    return "\n".join(lines) + "\n"
