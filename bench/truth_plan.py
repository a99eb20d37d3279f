"""How few images the ablation ground truth can use, and how long the planned truth takes.

For every bundled model (seed-0 test images), the ablation truth is measured with 32, 64 and 128
triggered + clean images and compared with the 256-image truth on the same neurons (at most 400 of them,
a seeded sample): Spearman correlation of the per-neuron backdoor effect and the share of the 256-image
infected labels that the smaller truth also labels infected. Then the truth as the app and
`python -m defense identify` run it (``defense.ablation.plan``: images and neuron sample from the
neuron count) is timed on one torch thread, the app's setting beside a web server.

Run from the repository root: .venv/bin/python -m bench.truth_plan  (writes the 'truth-plan' section)
"""

from __future__ import annotations

import time

import torch

from bench.sections import rows_per_bundled_model, write_section
from defense import bundle as bundle_io
from defense import metrics
from defense.ablation import ground_truth, plan
from defense.data import load_splits_for
from defense.neurons import neuron_map

SIZES = (32, 64, 128)
REFERENCE, SAMPLE = 256, 400


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def flat(gt: dict, key: str, keep: torch.Tensor) -> torch.Tensor:
    return torch.cat(list(gt[key].values()))[keep]


def measure(name: str) -> dict:
    b = bundle_io.load_bundle(name)
    splits = load_splits_for(b.meta, None, seed=0)
    triggered = metrics.triggered_set(splits.test, b.trigger, b.target)
    model, layers = b.model.eval(), neuron_map(b.model)
    ref = ground_truth(model, layers, splits.test, triggered, max_images=REFERENCE, max_neurons=SAMPLE)
    keep = torch.cat(list(ref["measured"].values()))
    effect, infected = flat(ref, "backdoor_effect", keep), flat(ref, "infected", keep)
    row = {"model": b.name, "neurons": sum(nl.size for nl in layers.values())}
    for n in SIZES:
        gt = ground_truth(model, layers, splits.test, triggered, max_images=n, max_neurons=SAMPLE)
        row[f"rho {n}"] = spearman(effect, flat(gt, "backdoor_effect", keep))
        row[f"overlap {n}"] = float((infected & flat(gt, "infected", keep)).sum()) / max(int(infected.sum()), 1)
    images, sample = plan(row["neurons"])
    start = time.perf_counter()
    ground_truth(model, layers, splits.test, triggered, max_images=None)
    row.update(images=images, measured=sample or row["neurons"], seconds=time.perf_counter() - start)
    return row


def main(argv: list[str] | None = None) -> None:
    rows = rows_per_bundled_model(measure, argv)
    head = " | ".join(f"ρ / overlap at {n}" for n in SIZES)
    lines = [
        "## Ablation truth: images needed, and the planned truth's time",
        "",
        f"`python -m bench.truth_plan`, {time.strftime('%Y-%m-%d')}, one torch thread. Per model, the truth with",
        f"fewer triggered + clean images against the {REFERENCE}-image truth on the same neurons (≤ {SAMPLE},",
        "seeded): Spearman ρ of the backdoor effect / share of its infected labels found again. Then the",
        "truth as planned by `defense.ablation.plan` (a budget of 80,000 neuron-images), timed once.",
        "",
        f"| model | neurons | {head} | planned images | neurons measured | seconds |",
        "|---|---|" + "---|" * len(SIZES) + "---|---|---|",
    ]
    for r in rows:
        cells = " | ".join(f"{r[f'rho {n}']:.3f} / {r[f'overlap {n}']:.0%}" for n in SIZES)
        lines.append(
            f"| {r['model']} | {r['neurons']:,} | {cells} | {r['images']} | {r['measured']:,} | {r['seconds']:.1f} |"
        )
    write_section("truth-plan", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
