"""The recommended defense against the goal on every bundled model and seed, with the rebound.

Goal (issue 9): ASR ≤ 2% with ≤ 1 point of clean accuracy lost, and no rebound: the final ASR
within 2 points of the lowest ASR measured during the run (every 25 steps). Runs each named
defense with its default settings on every bundled model × seed (each seed its own clean
subset) and writes the 'recommended-defense' section of bench/RESULTS.md.

Run from the repository root: .venv/bin/python -m bench.recommended [--defenses D ...] [--jsonl FILE]
``--replay FILE`` writes the section from runs saved earlier with ``--jsonl`` (no training).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from bench.grid import read_jsonl, run_grid
from bench.sections import write_section
from defense import baselines, data, metrics
from defense import bundle as bundle_io
from defense.paths import MODELS_DIR
from defense.purify import PurifyConfig

ASR_GOAL, DROP_GOAL, REBOUND_GOAL = 0.02, 0.01, 0.02


def measure(defense: str, model: str, seed: int) -> dict:
    b = bundle_io.load_bundle(MODELS_DIR / model)
    splits = data.load_dataset(b.meta["dataset"], seed=seed)
    triggered = metrics.triggered_set(splits.test, b.trigger, b.target)
    run = baselines.make(defense, b.model, splits.clean, splits.test, triggered, replace(PurifyConfig(), seed=seed))
    result = run.run()
    return {
        "defense": defense,
        "model": model,
        "seed": seed,
        "acc0": result["before"]["clean_acc"],
        "acc": result["after"]["clean_acc"],
        "asr": result["after"]["asr"],
        "min_asr": min(h["asr"] for h in run.history if "asr" in h),
        "seconds": result["seconds"],
    }


def section(rows: list[dict]) -> str:
    lines = [
        "## Recommended defense against the goal, with the rebound",
        "",
        f"`bench/recommended.py`, {time.strftime('%Y-%m-%d')}: default settings, every bundled model × 3 clean "
        "subsets; ACC / ASR in %. Goal: ASR ≤ 2, ≤ 1 point lost, final ASR within 2 points of the lowest seen "
        "during the run (evaluated every 25 steps).",
        "",
        "| defense | model | seed | ACC before | after ACC / ASR | ACC drop | lowest ASR in the run | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, list[bool]] = {}
    for r in rows:
        drop = r["acc0"] - r["acc"]
        ok = r["asr"] <= ASR_GOAL and drop <= DROP_GOAL and r["asr"] - r["min_asr"] <= REBOUND_GOAL
        summary.setdefault(r["defense"], []).append(ok)
        lines.append(
            f"| {r['defense']} | {r['model']} | {r['seed']} | {100 * r['acc0']:.1f} | {100 * r['acc']:.1f} / "
            f"{100 * r['asr']:.1f} | {100 * drop:.1f} | {100 * r['min_asr']:.1f} | {'✓' if ok else '✗'} |"
        )
    lines.append("")
    for name, oks in summary.items():
        mine = [r for r in rows if r["defense"] == name]
        lines.append(
            f"- {name}: {sum(oks)}/{len(oks)} runs meet the goal; ASR after {100 * min(r['asr'] for r in mine):.1f}–"
            f"{100 * max(r['asr'] for r in mine):.1f}, accuracy drop "
            f"{100 * min(r['acc0'] - r['acc'] for r in mine):.1f}–{100 * max(r['acc0'] - r['acc'] for r in mine):.1f}"
            " points."
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--defenses", nargs="*", default=[baselines.recommended().name])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jsonl", help="append each run as a JSON line here")
    parser.add_argument("--replay", help="write the section from the JSON lines of an earlier run")
    args = parser.parse_args(argv)
    if args.replay:
        rows = read_jsonl(args.replay)
    else:
        rows = run_grid(args.defenses, args.seeds, measure, args.jsonl)
    write_section("recommended-defense", section(rows))


if __name__ == "__main__":
    main()
