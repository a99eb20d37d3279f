"""Do the default settings carry over to backdoors they were never tuned on?

Trains two models with triggers of our own making (a mask/pattern file the defaults never
saw, and a blend with another pattern and strength), then runs BS + AR with default
settings on 3 seeds. Writes the 'unseen triggers' section of bench/RESULTS.md.
Run from the repository root: .venv/bin/python -m bench.unseen
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.sections import write_section
from defense import attacks, data, metrics
from defense.purify import Purification, PurifyConfig
from defense.runtime import configure_threads
from defense.train import train_backdoored


def l_shaped_trigger(shape) -> attacks.MaskPatternTrigger:
    """A 5-pixel 'L' in the top-left corner: a shape and place no bundled model uses."""
    mask = torch.zeros(shape)
    for r, c in ((2, 2), (3, 2), (4, 2), (5, 2), (5, 3), (5, 4)):
        mask[:, r, c] = 1
    return attacks.MaskPatternTrigger(mask, mask.clone(), kind="file")


def main(seeds: int = 3) -> None:
    configure_threads()
    base = data.load_dataset("mnist5k")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "l.safetensors"
        t = l_shaped_trigger(base.input_shape)
        save_file(t.tensors(), str(path))
        cases = {
            "L-shaped patch from a file, target 9": (attacks.load_trigger_file(path, base.input_shape), 9),
            "blend, other noise (seed 42), α = 0.15, target 2": (
                attacks.blend(base.input_shape, alpha=0.15, seed=42),
                2,
            ),
        }
        lines = [
            "## Unseen triggers: default BS + AR on backdoors the defaults were not tuned on",
            "",
            f"`bench/unseen.py` on {time.strftime('%Y-%m-%d')}; models trained here (8 epochs, 10% poisoning), "
            f"{seeds} seeds of the clean subset; ACC / ASR in %.",
            "",
            "| trigger | before ACC / ASR | seed | after ACC / ASR | ACC drop | goal (ASR ≤ 2, drop ≤ 1) |",
            "|---|---|---|---|---|---|",
        ]
        for label, (trigger, target) in cases.items():
            b, _ = train_backdoored(base, trigger, target, progress=False)
            for seed in range(seeds):
                splits = data.load_dataset("mnist5k", seed=seed)
                triggered = metrics.triggered_set(splits.test, b.trigger, b.target)
                r = Purification(b.model, splits.clean, splits.test, triggered, PurifyConfig(seed=seed)).run()
                before, after = r["before"], r["after"]
                drop = before["clean_acc"] - after["clean_acc"]
                ok = after["asr"] <= 0.02 and drop <= 0.01
                lines.append(
                    f"| {label} | {before['clean_acc']:.1%} / {before['asr']:.1%} | {seed} | "
                    f"{after['clean_acc']:.1%} / {after['asr']:.1%} | {drop * 100:.1f} | {'✓' if ok else '✗'} |"
                )
    text = "\n".join(lines).replace("%", "")
    write_section("unseen-triggers", text)
    print(text)


if __name__ == "__main__":
    main()
