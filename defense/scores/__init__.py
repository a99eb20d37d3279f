"""The per-neuron scores, one module each; importing this package registers them all.

To add a score, add a module here that calls ``SCORES.register(Score(...))`` (see
``magnitude.py`` for the smallest one): the CLI's ``--metric`` choices, the app's
selectors and help texts, ``identify``/``bench`` and the README table pick it up.
Modules are imported in alphabetical order, except that the original four come first
in the order the app has always shown them.
"""

from __future__ import annotations

import importlib
import pkgutil

_FIRST = ("benign", "magnitude", "activation", "clp")

for _name in sorted(
    (m.name for m in pkgutil.iter_modules(__path__)), key=lambda n: (_FIRST.index(n) if n in _FIRST else 99, n)
):
    importlib.import_module(f"{__name__}.{_name}")
