"""What the app's defaults mean on the default bundled model, computed rather than written in,
so that a change of default (say, the share marked) moves the tests with it."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from defense import bundle
from defense.neurons import neuron_map
from defense.purify import PurifyConfig

DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "assets" / "models" / "mnist-badnets"


@cache
def layer_sizes() -> tuple[int, ...]:
    return tuple(nl.size for nl in neuron_map(bundle.load_bundle(DEFAULT_BUNDLE).model).values())


def marked_count() -> int:
    """How many neurons a first visit marks: round(ratio·n) of each layer."""
    return sum(round(PurifyConfig().ratio * n) for n in layer_sizes())


def marked_by_default() -> str:
    """The Threshold page's 'Marked neurons' on a first visit."""
    return f"{marked_count()} of {sum(layer_sizes())}"
