"""Where comparison results live on disk: a per-user cache and the results shipped with the bundled models.

A results file holds the runs of one model, known by its *fingerprint* (a hash of its weights,
meta.json and trigger tensors), grouped by *subset*: the clean fraction, the seed of the clean
subset (also the fine-tuning seed) and a hash of the requested settings. A cached run is reused
only when all of these match, so a changed model, clean subset or setting is never answered from
an old file.

- cache: ``$BNL_CACHE/compare/<fingerprint>.json`` (default ``~/.cache/backdoor-neuron-lab``);
- shipped: ``assets/results/<model name>.json``, written by
  ``python -m defense compare --bundle assets/models/NAME --seeds 3 --out assets/results/NAME.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import torch

FORMAT = 1
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "results"
PACKAGES = ("torch", "numpy", "pandas", "plotly", "safetensors", "captum", "streamlit")


def cache_dir() -> Path:
    return Path(os.environ.get("BNL_CACHE", Path.home() / ".cache" / "backdoor-neuron-lab")) / "compare"


def fingerprint(bundle) -> str:
    """A hash of the weights, meta.json and trigger tensors (``bundle.fingerprint`` when the bundle has one).

    The meta's measured numbers and name are left out: renaming a model does not change what it computes.
    """
    own = getattr(bundle, "fingerprint", None)
    if isinstance(own, str):
        return own
    if callable(own):
        return own()
    h = hashlib.sha256()
    for k, v in sorted(bundle.model.state_dict().items()):
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    meta = {k: v for k, v in bundle.meta.items() if k not in ("name", "clean_acc", "asr", "training")}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for k, v in sorted(bundle.trigger.tensors().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


# Settings added after results were first saved, with the value that switches them off: left out of the key
# while off, so that results saved (and shipped) before they existed still match the same run.
ADDED_SETTINGS_OFF = {"anchor": 0.0, "reversed_share": 0.0, "reversed_count": 1}


def settings_key(settings: dict) -> str:
    """A short hash of the requested settings (the seed left out: it is part of the subset)."""
    off = ADDED_SETTINGS_OFF
    shown = {k: v for k, v in settings.items() if k != "seed" and not (k in off and v == off[k])}
    return hashlib.sha256(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()[:12]


def subset_key(fraction: float, seed: int, settings: dict) -> str:
    return f"f{fraction:g}:s{seed}:{settings_key(settings)}"


def environment() -> dict:
    """What a reader needs to reproduce a number: interpreter, packages, threads, device."""
    versions = {}
    for name in ("backdoor-neuron-lab", *PACKAGES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions["torch"] = torch.__version__
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def read(path: Path) -> dict | None:
    """A results file, or None when it is missing or unreadable (a damaged cache is just a miss)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("subsets"), dict):
        return None
    return data


def empty(fp: str, model_name: str) -> dict:
    return {"format": FORMAT, "fingerprint": fp, "model": model_name, "subsets": {}}


def add_runs(data: dict, fraction: float, seed: int, settings: dict, runs: dict[str, dict], env: dict) -> dict:
    """Merge finished runs (by defense name) into ``data`` under their subset; returns ``data``."""
    key = subset_key(fraction, seed, settings)
    subset = data["subsets"].setdefault(
        key, {"clean_fraction": fraction, "seed": seed, "settings": settings, "runs": {}}
    )
    subset["runs"].update(runs)
    subset["environment"] = env
    return data


def write(data: dict, path: Path) -> Path:
    """Write atomically (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(data, indent=1, allow_nan=False))
    os.replace(partial, path)
    return path


def cache_path(fp: str) -> Path:
    return cache_dir() / f"{fp}.json"


def shipped_path(model_name: str) -> Path:
    return SHIPPED_DIR / f"{model_name}.json"


def lookup(fp: str, model_name: str, fraction: float, seed: int, settings: dict) -> tuple[dict[str, dict], str]:
    """(runs by defense name, source) for one subset: the user's cache first, then the shipped results.

    ``source`` is 'cache', 'shipped' or '' (nothing found). Files whose fingerprint differs are ignored.
    """
    key = subset_key(fraction, seed, settings)
    found: dict[str, dict] = {}
    source = ""
    for where, path in (("shipped", shipped_path(model_name)), ("cache", cache_path(fp))):
        data = read(path)
        if data is None or data.get("fingerprint") != fp:
            continue
        runs = data["subsets"].get(key, {}).get("runs", {})
        if runs:
            found.update({name: {**run, "source": where} for name, run in runs.items()})
            source = where if not source or where == "cache" else source
    return found, source


def save_to_cache(fp: str, model_name: str, fraction: float, seed: int, settings: dict, runs: dict[str, dict]) -> None:
    """Add finished runs to the user's cache; a cache that cannot be written is not an error."""
    path = cache_path(fp)
    data = read(path) or empty(fp, model_name)
    if data.get("fingerprint") != fp:
        data = empty(fp, model_name)
    try:
        write(add_runs(data, fraction, seed, settings, runs, environment()), path)
    except OSError:
        pass
