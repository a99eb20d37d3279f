"""Where the repository keeps its bundled models and benchmark results."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "assets" / "models"
RESULTS = ROOT / "bench" / "RESULTS.md"


def bundled_models() -> list[str]:
    """Names of the bundled models (the folders under assets/models that hold a meta.json)."""
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "meta.json").is_file())
