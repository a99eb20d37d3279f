"""Where the repository keeps its bundled models and benchmark results."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "assets" / "models"
RESULTS = ROOT / "bench" / "RESULTS.md"


def bundled_models() -> list[str]:
    """Names of the bundled models (the folders under assets/models that hold a meta.json)."""
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "meta.json").is_file())


def benchmark_models() -> list[str]:
    """The bundled models the benchmark loops over by default: the small CNNs (seconds per run on 2 cores).

    The research-scale PreAct-ResNet-18 takes minutes per purification on a CPU; name it with --models.
    """
    return [
        n
        for n in bundled_models()
        if json.loads((MODELS_DIR / n / "meta.json").read_text())["architecture"] == "small_cnn"
    ]
