"""AR against L1 and L2 with the same marking (issue 9, item 4), at the default λ and at a ten times stronger one.

The paper claims adaptive regularization converges faster and more stably than L1/L2. Each variant runs
benign-salience marking with distillation (the ``bs-ar-kd`` / ``bs-l1`` / ``bs-l2`` family: the same marked
neurons, the same fine-tuning) on every bundled model × 3 clean subsets, with the regularizer, λ and AR's knee
set as named and everything else at PurifyConfig's defaults, and records
the steps to ASR ≤ 5% (evaluated every 10 steps, as the main benchmark), the final ACC / ASR, the rebound
(final minus lowest ASR) and whether training diverged (the loss or the weights not finite). Writes the
'regularizers' section of bench/RESULTS.md.

Run from the repository root: .venv/bin/python -m bench.regularizers [--variants NAME ...] [--jsonl FILE]
``--replay FILE ...`` writes the section from runs saved earlier with ``--jsonl`` (no training).
``--bundles DIR ...`` runs the same variants on other bundle folders instead (e.g. the models that
``bench/unseen.py --cache DIR`` trained, named ``KIND-sSEED``), on clean subset 0 unless ``--seeds`` says more,
and writes the 'regularizers-unseen' section, one column per kind: a check that a setting chosen on the bundled
models holds on backdoors it was not chosen on.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

from bench.grid import read_jsonl, run_grid
from bench.sections import kind_of, write_section
from defense import bundle as bundle_io
from defense import data, metrics
from defense.compare import steps_to_goal
from defense.paths import MODELS_DIR, benchmark_models
from defense.purify import Purification, PurifyConfig

# name: (regularizer, settings) on benign-salience marking with distillation (the bs-ar-kd / bs-l1 / bs-l2 family),
# every other setting at PurifyConfig's default: the registered defenses' own defaults do not apply here, so a row
# means what its name says. knee_scale is AR's knee as a multiple of each tensor's RMS (default 2)
VARIANTS = {
    "AR, λ 0.03 (default)": ("ar", {"lam": 0.03}),
    "L1, λ 0.03": ("l1", {"lam": 0.03}),
    "L2, λ 0.03": ("l2", {"lam": 0.03}),
    "AR, λ 0.3": ("ar", {"lam": 0.3}),
    "L1, λ 0.3": ("l1", {"lam": 0.3}),
    "L2, λ 0.3": ("l2", {"lam": 0.3}),
    "AR, λ 0.03, knee 0.5×RMS": ("ar", {"lam": 0.03, "knee_scale": 0.5}),
    "AR, λ 0.3, knee 0.5×RMS": ("ar", {"lam": 0.3, "knee_scale": 0.5}),
    # the low knee makes AR stronger than L1 at the same λ (e^(|w|/κ − 1) ≥ 1 above it): is it only stronger?
    "L1, λ 1": ("l1", {"lam": 1.0}),
}
EVAL_EVERY = 10


def measure(variant: str, model: str, seed: int) -> dict:
    """One run; ``model`` is a bundled model's name or a bundle folder's path."""
    reg, settings = VARIANTS[variant]
    b = bundle_io.load_bundle(MODELS_DIR / model)  # an absolute path replaces MODELS_DIR
    splits = data.load_dataset(b.meta["dataset"], seed=seed)
    triggered = metrics.triggered_set(splits.test, b.trigger, b.target)
    config = replace(PurifyConfig(), seed=seed, eval_every=EVAL_EVERY, metric="benign", reg=reg, **settings)
    run = Purification(b.model, splits.clean, splits.test, triggered, config)
    row = {"variant": variant, "model": Path(model).name, "seed": seed}
    try:
        run.run()
    except FloatingPointError as e:  # the penalty blew the weights or the loss up
        return {**row, "diverged": str(e)}
    evals = [h for h in run.history if "asr" in h]
    first = steps_to_goal(evals)
    return {
        **row,
        "steps_to_goal": None if math.isnan(first) else first,
        "acc0": evals[0]["clean_acc"],
        "acc": evals[-1]["clean_acc"],
        "asr": evals[-1]["asr"],
        "min_asr": min(h["asr"] for h in evals),
    }


def _half_range(values: list[float]) -> float:
    return (max(values) - min(values)) / 2 if values else float("nan")


def section(rows: list[dict], unseen: bool = False) -> str:
    """The table: one column per bundled model, or with ``unseen`` one per trigger kind (its models pooled)."""
    column = kind_of if unseen else (lambda m: m)
    models = list(dict.fromkeys(column(r["model"]) for r in rows)) if unseen else benchmark_models()
    if unseen:
        title, what = (
            "## AR against L1 and L2 on backdoors the settings were not chosen on",
            "the models `bench/unseen.py` trains (one column per trigger kind, its three training seeds pooled), "
            "clean subset 0",
        )
    else:
        title, what = "## AR against L1 and L2, same marking", "every bundled model × 3 clean subsets"
    lines = [
        title,
        "",
        f"`bench/regularizers.py`, {time.strftime('%Y-%m-%d')}: benign-salience marking (40% per layer) with "
        f"distillation, each regularizer at the λ named, {what}; steps to ASR ≤ 5% "
        f"evaluated every {EVAL_EVERY} (mean ± half the range over the runs that got there, and how many did); "
        "ACC / ASR in %. Diverged: the loss or the weights became infinite (the run stops with an error).",
        "",
        "| variant | diverged | "
        + " | ".join(f"{m} steps to ≤ 5%" for m in models)
        + " | mean steps | ASR after, mean [max] | ACC drop, mean | rebound, max |",
        "|---|---|" + "---|" * len(models) + "---|---|---|---|",
    ]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        ran = [r for r in mine if "diverged" not in r]
        cells = []
        for m in models:
            got = [r["steps_to_goal"] for r in ran if column(r["model"]) == m and r["steps_to_goal"] is not None]
            n = sum(1 for r in mine if column(r["model"]) == m)
            mean = f"{statistics.mean(got):.0f} ± {_half_range(got):.0f}" if got else "—"
            cells.append(f"{mean} ({len(got)}/{n})")
        reached = [r["steps_to_goal"] for r in ran if r["steps_to_goal"] is not None]
        drop = statistics.mean(r["acc0"] - r["acc"] for r in ran) if ran else 0.0
        tail = (
            f"{statistics.mean(reached):.0f} | {100 * statistics.mean(r['asr'] for r in ran):.1f} "
            f"[{100 * max(r['asr'] for r in ran):.1f}] | {100 * drop:.2f} "
            f"| {100 * max(r['asr'] - r['min_asr'] for r in ran):.1f}"
            if reached
            else "— | — | — | —"
        )
        lines.append(f"| {variant} | {len(mine) - len(ran)}/{len(mine)} | {' | '.join(cells)} | {tail} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, help="clean subsets (default: 3; 1 with --bundles)")
    parser.add_argument("--jsonl", help="append each run as a JSON line here")
    parser.add_argument("--replay", nargs="*", help="write the section from the JSON lines of earlier runs")
    parser.add_argument("--bundles", nargs="*", help="bundle folders to run on instead of the bundled models")
    args = parser.parse_args(argv)
    if args.replay:
        rows = read_jsonl(*args.replay)
        order = {v: i for i, v in enumerate(VARIANTS)}
        rows.sort(key=lambda r: order.get(r["variant"], len(order)))
    elif args.bundles:
        paths = [str(Path(p).resolve()) for p in args.bundles]
        rows = run_grid(args.variants, args.seeds or 1, measure, args.jsonl, models=paths)
    else:
        rows = run_grid(args.variants, args.seeds or 3, measure, args.jsonl)
    unseen = args.bundles is not None or any(r["model"] not in benchmark_models() for r in rows)
    write_section("regularizers-unseen" if unseen else "regularizers", section(rows, unseen=unseen))


if __name__ == "__main__":
    main()
