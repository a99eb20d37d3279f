"""What a purification run produced: its report (a JSON-able dict) and the purified bundle.

One builder each, used by ``Purification.run``, the CLI's ``purify`` and the app's Purify page,
so the three report the same fields in the same way.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

from torch import nn

from .bundle import Bundle

if TYPE_CHECKING:  # only a type here: purify imports this module to build its own report
    from .purify import PurifyConfig

RATES = ("clean_acc", "asr")


def _rates(record: dict | None) -> dict[str, float] | None:
    return {k: record[k] for k in RATES} if record else None


def _json_number(value: Any) -> Any:
    """NaN and infinity are not JSON: they become null (the step-0 record has no training loss)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def run_report(
    records: list[dict],
    config: PurifyConfig | None = None,
    *,
    context: dict[str, Any] | None = None,
    history: bool = False,
) -> dict[str, Any]:
    """The report of a run from its step records (``Purification.history``, or a live copy of it).

    ``before``/``after``: clean accuracy and ASR at the first and the last evaluated step (None
    before any); ``steps`` and ``seconds`` at the last record; ``config`` the settings when given.
    ``context`` entries (model name, defense, status, ...) come first; with ``history`` the report
    ends with the number of marked neurons and every record, NaN written as null.
    """
    evaluated = [r for r in records if "asr" in r]
    report: dict[str, Any] = dict(context or {})
    report["before"] = _rates(evaluated[0] if evaluated else None)
    report["after"] = _rates(evaluated[-1] if evaluated else None)
    report["steps"] = records[-1]["step"] if records else 0
    report["seconds"] = round(records[-1]["seconds"], 2) if records else 0.0
    if config is not None or history:
        report["config"] = config.to_dict() if config is not None else None
    if history:
        report["marked_neurons"] = records[0]["marked"] if records else None
        report["history"] = [{k: _json_number(v) for k, v in r.items()} for r in records]
    return report


def purified_meta(
    source: dict, *, name: str, source_name: str, after: dict, config: PurifyConfig, defense: str | None = None
) -> dict[str, Any]:
    """meta.json of a purified model: the source's, with the new name, measured rates and settings."""
    settings = config.to_dict()
    return {
        **copy.deepcopy(source),
        "name": name,
        "clean_acc": round(after["clean_acc"], 4),
        "asr": round(after["asr"], 4),
        "purified_from": source_name,
        "purification": {"defense": defense, **settings} if defense is not None else settings,
    }


def purified_bundle(
    source: Bundle, model: nn.Module, *, name: str, after: dict, config: PurifyConfig, defense: str | None = None
) -> Bundle:
    """The purified model as a bundle (same trigger and target as the source, so it can be measured again)."""
    meta = purified_meta(source.meta, name=name, source_name=source.name, after=after, config=config, defense=defense)
    return Bundle(model, meta, source.trigger)
