"""Why benign salience is unstable across clean subsets: more images, held-out images, and the hardest few.

Per bundled model, against the ablation truth (seed-0 test images, ``ablation.ground_truth``):
- BS as the app computes it (``salience.compute("benign")``) on 3 *disjoint* sets of training images
  of 200, 400, 800 and 1,300 images (the defender's 5% is 200): AUC mean, spread (max − min) and the
  lowest pairwise Spearman ρ of the per-neuron values — does a larger clean set steady it?
- the same on 3 disjoint sets of 200 *held-out* images (test images 0–599, which the model was not
  trained on; the truth then uses test images 600 onwards): is the training minimum the cause?
- each of these again with BS's median over images instead of its mean (the ``benign-median`` score);
- on the defender's three 5% subsets (seeds 0–2), the share of Σ|per-image salience| carried by the
  5% of clean images with the highest loss, and the Spearman ρ between BS and those images' sum alone
  (``stability.hardest_images_share``).

Run from the repository root: .venv/bin/python -m bench.bs_stability  (writes the 'bs-stability' section)
"""

from __future__ import annotations

import time

import torch

import defense.scores  # noqa: F401  (registers every score)
from bench.sections import rows_per_bundled_model, write_section
from defense import ablation, metrics, salience, stability
from defense import bundle as bundle_io
from defense.data import TensorData, load_splits_for
from defense.neurons import neuron_map

SIZES = (200, 400, 800, 1300)
HELD_OUT = 200  # three disjoint sets from test images 0..599
SCORES = {"benign": "", "benign-median": ", median over images"}  # the paper's mean, and the robust estimate


def _row(model, layers, sets: list[TensorData], truth: dict, score: str = "benign") -> dict:
    runs = [salience.compute(score, model, s, layers) for s in sets]
    aucs = [metrics.identification_quality(r, truth["infected"], truth["measured"])["auc"] for r in runs]
    rho = stability.stability(runs)["spearman_min"]
    return {"auc": sum(aucs) / len(aucs), "spread": max(aucs) - min(aucs), "rho": rho}


def measure(path: str) -> dict:
    b = bundle_io.load_bundle(path)
    model, layers = b.model.eval(), neuron_map(b.model)
    splits = load_splits_for(b.meta, None, seed=0)
    test, train = splits.test, splits.train

    def truth_on(images: TensorData) -> dict:
        return ablation.ground_truth(model, layers, images, metrics.triggered_set(images, b.trigger, b.target))

    truth = truth_on(test)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))
    row = {"model": b.name, "rows": {}}
    defender = [load_splits_for(b.meta, None, seed=s).clean for s in range(3)]
    for score, how in SCORES.items():
        row["rows"][f"the defender's 5% (seeds 0–2){how}"] = _row(model, layers, defender, truth, score)
        for n in SIZES:
            if 3 * n <= len(train):
                sets = [train.subset(order[i * n : (i + 1) * n]) for i in range(3)]
                row["rows"][f"training, {n}{how}"] = _row(model, layers, sets, truth, score)
        if len(test) >= 3 * HELD_OUT + 100:
            held = [test.subset(torch.arange(i * HELD_OUT, (i + 1) * HELD_OUT)) for i in range(3)]
            rest = test.subset(torch.arange(3 * HELD_OUT, len(test)))
            row["rows"][f"held-out, {HELD_OUT}{how}"] = _row(model, layers, held, truth_on(rest), score)
    hardest = [stability.hardest_images_report(model, clean, layers) for clean in defender]
    row["hardest"] = {
        "images": hardest[0]["images"],
        "of": hardest[0]["of"],
        "share": [h["share"] for h in hardest],
        "rho": [h["spearman"] for h in hardest],
    }
    return row


def _cell(row: dict) -> str:
    return f"{row['auc']:.2f} [{row['spread']:.2f}; ρ {row['rho']:.2f}]"


def section(rows: list[dict]) -> str:
    kinds = list(dict.fromkeys(k for r in rows for k in r["rows"]))
    lines = [
        "## Why benign salience is unstable (bench/bs_stability.py)",
        "",
        f"`python -m bench.bs_stability` on {time.strftime('%Y-%m-%d')}, one torch thread. BS as the app computes",
        "it on 3 clean sets per row (the defender's subsets; disjoint training images; held-out test images the model",
        "never saw), as the paper's mean over images and as its median over images (`benign-median`), against",
        "the ablation truth: AUC mean [spread = max − min; ρ = lowest pairwise Spearman of the per-neuron values].",
        "Goal of issue 9: spread ≤ 0.10 and ρ ≥ 0.8.",
        "",
        "| clean images | " + " | ".join(r["model"] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for k in kinds:
        cells = [_cell(r["rows"][k]) if k in r["rows"] else "–" for r in rows]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "On the defender's three 5% subsets: the share of Σ|per-image salience| carried by the 5% of clean images",
        "with the highest loss, and the Spearman ρ between BS and the sum over those images alone (per subset).",
        "",
        "| model | hardest images | their share of BS | ρ (BS, their sum) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        h = r["hardest"]
        share = " / ".join(f"{v:.0%}" for v in h["share"])
        rho = " / ".join(f"{v:.2f}" for v in h["rho"])
        lines.append(f"| {r['model']} | {h['images']} of {h['of']} | {share} | {rho} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    rows = rows_per_bundled_model(measure, argv)
    write_section("bs-stability", section(rows))


if __name__ == "__main__":
    main()
