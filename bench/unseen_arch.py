"""Does the recommended defense carry over to architectures and widths it was never tuned on?

The defaults were chosen on the bundled small CNN (width 16, hidden 64). Each case here trains
another architecture or width with a bundled attack kind (the same code path as
``python -m defense train``, training seed 0), then runs the recommended defense with its
default settings on 3 clean subsets (seeds 0–2), as ``python -m defense purify --bundle B
--seed S`` does. Writes the 'unseen architectures' section of bench/RESULTS.md.

Run from the repository root: .venv/bin/python -m bench.unseen_arch [--cases NAME ...] [--cache DIR]
[--jsonl FILE]; ``--replay FILE ...`` writes the section from saved runs (e.g. a new case's and the old ones').
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.sections import write_section
from bench.unseen import outcome_cells, run_defense
from defense import attacks, data
from defense import bundle as bundle_io
from defense.runtime import configure_threads
from defense.train import train_backdoored

# name -> (architecture, its options, attack kind, attack parameters, target)
CASES = {
    "cnn-narrow-sig": ("small_cnn", {"width": 8, "hidden": 32}, "sig", {}, 5),
    "cnn-wide-wanet": ("small_cnn", {"width": 32, "hidden": 128}, "wanet", {}, 1),
    "vgg16-badnets": ("vgg11", {"width": 16}, "badnets", {}, 0),
    "vgg16-blend": ("vgg11", {"width": 16}, "blend", {}, 3),
    "vgg16-wanet": ("vgg11", {"width": 16}, "wanet", {}, 7),
    "preact8-blend": ("preactresnet18", {"width": 8}, "blend", {}, 2),
    "resnet18-badnets": ("resnet18", {}, "badnets", {}, 4),  # torchvision's, full width: 11 M parameters
}


def trained(name: str, base, cache: Path):
    """The bundle of case ``name`` (training seed 0), cached in ``cache``."""
    out = cache / name
    if not (out / "meta.json").exists():
        arch, kwargs, attack, params, target = CASES[name]
        trigger = attacks.make_trigger(attack, base.input_shape, seed=0, **params)
        b, _ = train_backdoored(base, trigger, target, arch=arch, arch_kwargs=kwargs, seed=0, progress=False)
        bundle_io.save_bundle(b, out)
    return bundle_io.load_bundle(out)


def _row(r: dict) -> str:
    arch, kwargs, attack, _, _ = CASES[r["case"]]
    options = ", ".join(f"{k} {v}" for k, v in kwargs.items())
    cells = outcome_cells(r)
    cells.insert(4, f"{r['seconds']:.0f}")  # before the goal column
    name = f"{arch} ({options})" if options else arch
    return f"| {name} | {attack} | {r['seed']} | {' | '.join(cells)} |"


def _header(defense: str) -> list[str]:
    return [
        "## Unseen architectures: widths and networks the defaults were not tuned on",
        "",
        f"`bench/unseen_arch.py` on {time.strftime('%Y-%m-%d')}: one model per case, trained here like "
        "`python -m defense train` (training seed 0, 8 epochs, 10% poisoning), then the recommended defense "
        f"(`{defense}`) with its default settings on clean subsets 0–2. ACC / ASR in %; goal as for the unseen "
        "triggers: ASR ≤ 5 and ≤ 2 points lost; rebound: the final ASR minus the lowest seen during the run; "
        "seconds on a shared 2-core machine.",
        "",
        "| architecture | attack | clean subset | before ACC / ASR | after ACC / ASR | ACC drop | rebound | s | goal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]


def main(argv=None) -> None:
    from defense import baselines

    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", nargs="*", choices=list(CASES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache", help="keep the trained models here (default: a temporary folder)")
    parser.add_argument("--jsonl", help="also append one JSON line per run to this file")
    parser.add_argument("--replay", nargs="*", help="write the section from JSON lines saved by --jsonl (no training)")
    args = parser.parse_args(argv)
    defense = baselines.recommended().name
    lines = _header(defense)
    if args.replay:
        saved = [json.loads(line) for path in args.replay for line in Path(path).read_text().splitlines() if line]
        order = {name: i for i, name in enumerate(CASES)}
        saved.sort(key=lambda r: (order[r["case"]], r["seed"]))
        write_section("unseen-architectures", "\n".join(lines + [_row(r) for r in saved]))
        return
    configure_threads()
    base = data.load_dataset("mnist5k")
    with tempfile.TemporaryDirectory() as tmp_name:
        cache = Path(args.cache) if args.cache else Path(tmp_name)
        for name in args.cases or list(CASES):
            b = trained(name, base, cache)
            for seed in range(args.seeds):
                r = {"case": name, "seed": seed, **run_defense(defense, b, seed)}
                lines.append(_row(r))
                print(lines[-1], flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(r) + "\n")
    write_section("unseen-architectures", "\n".join(lines))


if __name__ == "__main__":
    main()
