"""Identification table: every registered score × every bundled model × 3 clean subsets,
against both ground truths; writes the 'identification' section of bench/RESULTS.md.

    python -m bench.identify [--seeds 3] [--models mnist-badnets ...] [--scores NAME ...]
    python -m bench.identify --bundles DIR ... --section identification-unseen   (any bundle folders)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from bench.sections import kind_of, write_section
from defense import bundle as bundle_io
from defense import data
from defense.identify import identify
from defense.paths import MODELS_DIR
from defense.runtime import configure_threads


def _pm(s: pd.Series) -> str:
    return f"{s.mean():.2f} ± {(s.max() - s.min()) / 2:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--bundles", nargs="*", help="bundle folders to measure instead of the bundled models")
    parser.add_argument("--scores", nargs="*", help="only these registered scores (default: every one)")
    parser.add_argument("--section", default="identification", help="the bench/RESULTS.md section to write")
    parser.add_argument("--title", default="Identification (two ground truths)", help="the section's heading")
    parser.add_argument("--raw", default="/tmp/bench_identify.jsonl", help="one JSON line per model and seed")
    parser.add_argument("--replay", action="store_true", help="write the section from --raw, measuring nothing")
    parser.add_argument(
        "--by-kind", action="store_true", help="pool models named KIND-sN (one per training seed) into one column"
    )
    args = parser.parse_args(argv)
    if not args.replay:
        measure(args)
    reports = [json.loads(line) for line in Path(args.raw).read_text().splitlines() if line]
    write_section(args.section, section(reports, args.title, args.by_kind))


def measure(args) -> None:
    """Every (model, clean subset): one JSON line of ``identify``'s report in ``args.raw``."""
    configure_threads()
    if args.bundles:
        paths = {Path(p).name: Path(p) for p in args.bundles}
    else:
        names = args.models or sorted(p.name for p in MODELS_DIR.iterdir() if (p / "meta.json").exists())
        paths = {n: MODELS_DIR / n for n in names}
    with open(args.raw, "w") as raw:
        for name, path in paths.items():
            b = bundle_io.load_bundle(path)
            for seed in range(args.seeds):
                report = identify(b, data.load_splits_for(b.meta, None, seed=seed), args.scores)
                raw.write(json.dumps({"model": name, "seed": seed, **report}) + "\n")
                raw.flush()


def section(reports: list[dict], title: str, by_kind: bool = False) -> str:
    """The markdown section: both truths' agreement per model, then each score's AUC per model (or kind)."""

    def column(name: str) -> str:
        return kind_of(name) if by_kind else name

    truths = [{"model": r["model"], **r["ground_truth"]} for r in reports if r["seed"] == 0]
    rows = [
        {"model": column(r["model"]), "seed": r["seed"], "score": k, **q}
        for r in reports
        for k, q in r["scores"].items()
    ]
    frame = pd.DataFrame(rows)
    names = list(dict.fromkeys(frame.model))
    spread = (
        "each model on clean subset 0, three models per kind (training seeds 0–2); mean ± half the range over the three"
        if by_kind
        else "each score on 3 clean subsets (seeds 0–2 of the 5% subset); mean ± half the range over the seeds"
    )
    lines = [
        f"## {title}",
        "",
        f"`python -m bench.identify` on {time.strftime('%Y-%m-%d')}: {spread}. Ablation truth: top 10% of neurons",
        "by the fall of the triggered images' target-logit margin when the neuron is zeroed. TAC truth: top 10% by",
        "trigger-activated change. AUC 0.5 is chance. P@k: precision among the k most suspect neurons (k = the",
        "infected count). CPU seconds per model and subset (one thread, a shared machine).",
        "",
        "| model | TAC AUC vs ablation labels | top-k overlap |",
        "|---|---|---|",
    ]
    lines += [f"| {t['model']} | {t['tac_auc_vs_ablation']:.2f} | {t['top_k_overlap']:.0%} |" for t in truths]
    lines += [
        "",
        "| score | " + " | ".join(names) + " | mean P@k | AUC vs TAC (mean) | CPU s |",
        "|---|" + "---|" * (len(names) + 3),
    ]
    for score, g in frame.groupby("score", sort=False):
        cells = [_pm(g[g.model == m].auc) for m in names]
        lines.append(
            f"| {score} | "
            + " | ".join(cells)
            + f" | {g.precision_at_k.mean():.2f} | {g.auc_tac.mean():.2f} | {g.cpu_seconds.mean():.1f} |"
        )
    found = [r for r in reports if "inversion" in r["scores"]]
    if found:
        hits = sum(
            1 for r in found if r["scores"]["inversion"].get("suspected_target") == r["ground_truth"].get("target")
        )
        lines += [
            "",
            f"Inversion's suspected target is the declared one on {hits} of {len(found)} (model, subset) pairs. "
            "Its label and Neural Cleanse's anomaly index (above 2: an outlier), per pair: "
            + ", ".join(
                f"{r['model']} s{r['seed']} {r['scores']['inversion'].get('suspected_target')} "
                f"({r['scores']['inversion'].get('anomaly_index', float('nan')):.1f})"
                for r in found
            )
            + ".",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
