"""Speed of the library on this machine: training, evaluate, salience, preview, purification.

Run from the repository root: .venv/bin/python -m bench.speed   (writes the 'library speed' section of bench/RESULTS.md)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time

import torch

from bench.sections import write_section
from defense import bundle, data, metrics, salience
from defense.masking import mark, preview
from defense.paths import ROOT
from defense.purify import Purification, PurifyConfig
from defense.registry import SCORES
from defense.runtime import configure_threads

MODEL = ROOT / "assets" / "models" / "mnist-badnets"


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "defense", *args], cwd=ROOT, check=True, capture_output=True)


def main() -> None:
    configure_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = timed(lambda: cli("train", "--attack", "badnets", "--target", "0", "--out", f"{tmp}/m", "--quiet"), 3)
        rows.append(("`train` a bundled model, default settings (CLI, wall)", t, 60))
    t = timed(lambda: cli("evaluate", "--bundle", str(MODEL), "--json"), 5)
    rows.append(("`evaluate --json` (CLI, wall, incl. Python start-up)", t, 3))
    b = bundle.load_bundle(MODEL)
    splits = data.load_dataset("mnist5k")
    triggered = metrics.triggered_set(splits.test, b.trigger, b.target)
    layers = salience.neuron_map(b.model)
    t = timed(lambda: [salience.compute(m, b.model, splits.clean, layers) for m in SCORES.names()], 7)
    rows.append(("all four salience metrics, all layers (in process)", t, 0.5))
    t = timed(lambda: salience.compute("benign", b.model, splits.clean, layers), 7)
    rows.append(("benign salience, all layers (in process)", t, 0.5))
    scores = salience.compute("benign", b.model, splits.clean, layers)
    t = timed(lambda: preview(b.model, layers, mark(scores, ratio=0.5), splits.test, triggered), 21)
    rows.append(("hard-prune preview: mark + accuracy + ASR on 1,000 + ~900 images", t, 0.3))
    t = timed(lambda: metrics.backdoor_ground_truth(b.model, layers, splits.test, triggered), 3)
    rows.append(("ground truth by ablation (every hidden neuron)", t, None))
    runs = [Purification(b.model, splits.clean, splits.test, triggered, PurifyConfig(seed=s)) for s in range(3)]
    t = timed(lambda: runs.pop().run(), 3)
    rows.append(("purification, default settings (300 steps)", t, 20))
    lines = [
        "## Library speed",
        "",
        f"`bench/speed.py` on {time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} torch threads, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}; median (min–max) of the runs, in seconds.",
        "",
        "| what | runs | median | min–max | goal |",
        "|---|---|---|---|---|",
    ]
    for what, times, goal in rows:
        med = statistics.median(times)
        verdict = "" if goal is None else (f"≤ {goal} ✓" if med <= goal else f"≤ {goal} ✗")
        lines.append(f"| {what} | {len(times)} | {med:.3f} | {min(times):.3f}–{max(times):.3f} | {verdict} |")
    write_section("library-speed", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
