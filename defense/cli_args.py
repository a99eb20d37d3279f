"""The command line's argument types and checks: numbers in range, step and epoch caps, --out, JSON options.

Every bad value raises ``argparse.ArgumentTypeError`` or ``UsageError``, which ``cli.main`` prints in one line.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .errors import UsageError
from .targets import ALL_TO_ALL, ALL_TO_ALL_NAMES

MAX_STEPS = 20_000  # purification steps; the recommended 300 take ~10 s for the MNIST models on one core
MAX_EPOCHS = 200  # training epochs; the bundled MNIST models use 8


def _number(text: str, kind: type = float) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None


def _integer(text: str) -> int:
    return _number(text, int)


def _target(text: str) -> int | str:
    """A class index, or 'all-to-all' (also 'all', 'all2all'): each label y sent to (y + 1) mod K."""
    if text.strip().lower() in ALL_TO_ALL_NAMES:
        return ALL_TO_ALL
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class index or '{ALL_TO_ALL}', got {text!r}") from None


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text}")
    return value


def _seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2^63), got {text}")
    return value


def _steps(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_STEPS:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_STEPS:,} steps are allowed (asked {value:,}; the recommended number is 300)"
        )
    return value


def _epochs(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_EPOCHS:
        raise argparse.ArgumentTypeError(f"at most {MAX_EPOCHS} epochs are allowed (asked {value:,})")
    return value


def check_out(path: str | Path, folder_ok: bool = True) -> Path:
    """Refuse an --out that cannot be written, before any work: its nearest existing folder must be writable."""
    path = Path(path)
    if path.exists() and path.is_dir() != (folder_ok and path.suffix != ".zip"):
        kind = "a folder" if path.is_dir() else "a file"
        raise UsageError(f"--out {path} is {kind}; expected {'a bundle folder or .zip' if folder_ok else 'a file'}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path} cannot be written ({parent} is not a writable folder)")
    return path


def _data_root_needed(dataset: str, data_root: str | None) -> None:
    """The library's message is the app's too; the CLI names its flag."""
    if dataset in ("cifar10", "imagefolder") and data_root is None:
        raise UsageError(f"dataset '{dataset}' needs a local folder: pass its path (--data-root)")


def _json_object(text: str | None, option: str, example: str) -> dict:
    value = json.loads(text) if text else {}
    if not isinstance(value, dict):
        raise UsageError(f"{option} must be a JSON object such as '{example}', got {text}")
    return value
