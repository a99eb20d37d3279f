"""meta.json of a bundle: every field checked for type and range, all problems listed at once."""

from __future__ import annotations

import math

from . import attacks, models
from .targets import ALL_TO_ALL

FORMAT_VERSION = 1


class BundleError(ValueError):
    """A bundle is unusable; the message says what is wrong, in one sentence where possible."""


# ---------------------------------------------------------------- meta.json

_REQUIRED = {
    "format_version": int,
    "architecture": str,
    "dataset": str,
    "num_classes": int,
    "input_shape": list,
    "normalization": dict,
    "attack": dict,
}


def validate_meta(meta: object) -> dict:
    """Check meta.json's fields and types; raise BundleError naming every problem."""
    if not isinstance(meta, dict):
        raise BundleError(f"meta.json must hold a JSON object, found {type(meta).__name__}")
    problems = []
    for key, kind in _REQUIRED.items():
        if key not in meta:
            problems.append(f"missing '{key}'")
        elif not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            problems.append(f"'{key}' should be {kind.__name__}, found {type(meta[key]).__name__}")
    if problems:
        raise BundleError("meta.json: " + "; ".join(problems))
    if meta["format_version"] > FORMAT_VERSION:
        problems.append(f"format_version {meta['format_version']} is newer than this tool reads ({FORMAT_VERSION})")
    elif meta["format_version"] < 1:
        problems.append(f"format_version must be at least 1, found {meta['format_version']}")
    if "name" in meta and not isinstance(meta["name"], str):
        problems.append("'name' should be a string")
    if meta["architecture"] not in models.architectures():
        problems.append(f"unknown architecture '{meta['architecture']}' (known: {', '.join(models.architectures())})")
    if not isinstance(meta.get("arch_kwargs", {}), dict):
        problems.append("'arch_kwargs' should be an object")
    if not 2 <= meta["num_classes"] <= 10_000:
        problems.append(f"'num_classes' must be between 2 and 10000, found {meta['num_classes']}")
    shape = meta["input_shape"]
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1024 for v in shape):
        problems.append(f"'input_shape' must be [C, H, W] of positive integers, found {shape}")
    norm = meta["normalization"]
    channels = shape[0] if not problems and len(shape) == 3 else None
    for key in ("mean", "std"):
        values = norm.get(key)
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            problems.append(f"'normalization.{key}' must be a list of numbers")
        elif channels is not None and len(values) != channels:
            problems.append(f"'normalization.{key}' has {len(values)} values for {channels} channel(s)")
        elif key == "std" and not all(v > 0 for v in values):
            problems.append("'normalization.std' values must be positive")
    attack = meta["attack"]
    if attack.get("kind") not in attacks.ATTACKS:
        problems.append(
            f"'attack.kind' must be one of {', '.join(attacks.ATTACKS.names())}, found {attack.get('kind')!r}"
        )
    target = attack.get("target_label")
    if target != ALL_TO_ALL and (
        not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < max(meta["num_classes"], 1)
    ):
        problems.append(
            f"'attack.target_label' must be an integer class in [0, {meta['num_classes'] - 1}] or "
            f"'{ALL_TO_ALL}', found {target!r}"
        )
    elif target == ALL_TO_ALL and meta["num_classes"] < 2:
        problems.append(f"'attack.target_label' '{ALL_TO_ALL}' needs at least 2 classes")
    if not _is_number(attack.get("poison_rate", 0)) or not 0 <= attack.get("poison_rate", 0) <= 1:
        problems.append("'attack.poison_rate' must be a number in [0, 1]")
    if not isinstance(attack.get("clean_label", False), bool):
        problems.append("'attack.clean_label' must be true or false")
    elif attack.get("clean_label") and target == ALL_TO_ALL:
        problems.append(f"'attack.clean_label' needs one target class, not '{ALL_TO_ALL}'")
    if not isinstance(attack.get("params", {}), dict):
        problems.append("'attack.params' should be an object")
    for key in ("clean_acc", "asr"):
        if key in meta and meta[key] is not None and (not _is_number(meta[key]) or not 0 <= meta[key] <= 1):
            problems.append(f"'{key}' must be a fraction in [0, 1]")
    if problems:
        raise BundleError("meta.json: " + "; ".join(problems))
    return meta


def _is_number(v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return isinstance(v, int) or math.isfinite(v)  # isfinite overflows on huge ints, which are finite anyway
