"""A measurement over every bundled model × seed, one JSON line per run, and reading such lines back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from defense.paths import benchmark_models
from defense.runtime import configure_threads


def run_grid(
    names: list[str],
    seeds: int,
    measure: Callable[[str, str, int], dict],
    jsonl: str | None,
    models: list[str] | None = None,
) -> list[dict]:
    """``measure(name, model, seed)`` for each name × model (default: every bundled one) × seed, printed (and
    appended to ``jsonl``)."""
    configure_threads()
    rows = []
    for name in names:
        for model in models or benchmark_models():
            for seed in range(seeds):
                rows.append(measure(name, model, seed))
                print(json.dumps(rows[-1]), flush=True)
                if jsonl:
                    with open(jsonl, "a") as f:
                        f.write(json.dumps(rows[-1]) + "\n")
    return rows


def read_jsonl(*paths: str) -> list[dict]:
    """The runs saved by ``run_grid``'s ``jsonl`` (for writing a section again without training)."""
    return [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
