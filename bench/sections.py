"""Keep named sections of bench/RESULTS.md below the marker that `python -m defense bench` preserves."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MARKER = "<!-- other benchmarks below are kept by bench/ scripts -->"


def kind_of(model: str) -> str:
    """``photo-blend-s2`` -> ``photo-blend``: a model trained per seed by bench/unseen.py, named by its kind."""
    return re.sub(r"-s\d+$", "", model)


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``name`` after the marker, leaving everything else as it is."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if MARKER not in text:
        text = text.rstrip("\n") + "\n\n" + MARKER + "\n"
    head, tail = text.split(MARKER, 1)
    start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in tail and end in tail:
        before, rest = tail.split(start, 1)
        tail = before + block + rest.split(end, 1)[1]
    else:
        tail = tail.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(head + MARKER + tail)


def rows_per_bundled_model(measure, argv: list[str] | None = None) -> list[dict]:
    """``measure(bundle folder)`` for each model named by ``--models`` (default: every bundled one), one torch
    thread, each row printed as it comes: the loop the per-model benchmarks share."""
    import argparse

    import torch

    from defense.paths import MODELS_DIR, bundled_models

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="*", help="bundle folders (default: every bundled model)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for path in args.models or [str(MODELS_DIR / name) for name in bundled_models()]:
        rows.append(measure(path))
        print(rows[-1], flush=True)
    return rows
