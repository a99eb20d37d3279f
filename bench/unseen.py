"""Does the recommended defense carry over to backdoors it was never tuned on?

Trains one model per trigger kind and seed (the same code path as ``python -m defense
train``: ``attacks.make_trigger`` then ``train.train_backdoored``, 8 epochs), then runs a
defense with its default settings on the clean subset of the same seed. Kinds: a natural
photo blended at α = 0.2 (matplotlib's ``grace_hopper.jpg``, which every install has:
captum and mlxtend need matplotlib), a small random patch at a random corner, an almost
invisible noise pattern, a sinusoid and a warp unlike the bundled ones, a patch at 1%
poisoning, a patch over the digit at 30% poisoning, two all-to-all backdoors (each label sent
to the next: a patch and the photo blend), two clean-label ones (only images of the target
class poisoned, labels kept: a noise blend and a sinusoid), and the two kinds of the first version of this
benchmark. Writes the 'unseen triggers' section of bench/RESULTS.md (``--section`` another).

Run from the repository root: .venv/bin/python -m bench.unseen [--kinds K ...] [--defenses D ...] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.sections import write_section
from defense import attacks, data, metrics
from defense import bundle as bundle_io
from defense.runtime import configure_threads
from defense.targets import ALL_TO_ALL
from defense.train import train_backdoored

ASR_GOAL, DROP_GOAL = 0.05, 0.02
TITLE = "Unseen triggers: backdoors the defaults were not tuned on"
CORNERS = ("top-left", "top-right", "bottom-left")  # the bundled badnets patch sits bottom right
CLEAN_LABEL = {"clean-label-blend", "clean-label-sig"}  # trained with train_backdoored(clean_label=True)


def natural_photo(shape) -> torch.Tensor:
    """matplotlib's sample photo of Grace Hopper, grey, resized to the image size, in [0, 1]."""
    import matplotlib
    from PIL import Image

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    channels, h, w = shape
    img = Image.open(path).convert("L" if channels == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR)
    x = torch.tensor(list(img.getdata()), dtype=torch.float32).view(h, w, -1).permute(2, 0, 1) / 255
    return x.expand(channels, h, w).clone()


def patch_file(shape, size: int, corner: str, seed: int, margin: int = 1):
    """A random black-and-white ``size``×``size`` patch (at least one white pixel) at ``corner`` (or "centre")."""
    gen = torch.Generator().manual_seed(seed)
    patch = (torch.rand(size, size, generator=gen) > 0.5).float()
    patch[0, 0] = 1.0
    _, h, w = shape
    if corner == "centre":  # over the digit's strokes, not on the empty border
        r, c = (h - size) // 2, (w - size) // 2
    else:
        r = margin if corner.startswith("top") else h - margin - size
        c = margin if corner.endswith("left") else w - margin - size
    mask, pattern = torch.zeros(shape), torch.zeros(shape)
    mask[:, r : r + size, c : c + size] = 1
    pattern[:, r : r + size, c : c + size] = patch
    return mask, pattern


def l_shape(shape):
    """A 6-pixel 'L' near the top-left corner (the first version of this benchmark)."""
    mask = torch.zeros(shape)
    for r, c in ((2, 2), (3, 2), (4, 2), (5, 2), (5, 3), (5, 4)):
        mask[:, r, c] = 1
    return mask, mask.clone()


def kinds(shape) -> dict:
    """name -> (description, builder(seed, tmp) -> (attack kind, params, trigger file or None), target, poison rate)."""

    def file_of(tensors, tmp: Path, name: str) -> str:
        path = tmp / f"{name}.safetensors"
        save_file({"mask": tensors[0].contiguous(), "pattern": tensors[1].contiguous()}, str(path))
        return str(path)

    return {
        "photo-blend": (
            "natural photo (grace_hopper.jpg) blended at α = 0.2, target 4",
            lambda s, tmp: ("file", {}, file_of((torch.full(shape, 0.2), natural_photo(shape)), tmp, "photo")),
            4,
            0.1,
        ),
        "corner-patch": (
            "random 3×3 patch at a random corner (not bottom right), target 6",
            lambda s, tmp: ("file", {}, file_of(patch_file(shape, 3, CORNERS[s % 3], 100 + s), tmp, f"corner{s}")),
            6,
            0.1,
        ),
        "faint-noise": (
            "uniform noise blended at α = 0.05 (at most 0.05 per pixel: invisible), target 8",
            lambda s, tmp: (
                "file",
                {},
                file_of(
                    (torch.full(shape, 0.05), torch.rand(shape, generator=torch.Generator().manual_seed(7))),
                    tmp,
                    "noise",
                ),
            ),
            8,
            0.1,
        ),
        "sinusoid": (
            "sinusoid, amplitude 0.1, 3 periods, target 1",
            lambda s, tmp: ("sig", {"delta": 0.1, "frequency": 3}, None),
            1,
            0.1,
        ),
        "warp": (
            "warp on an 8×8 control grid, strength 0.75, target 2",
            lambda s, tmp: ("wanet", {"k": 8, "strength": 0.75}, None),
            2,
            0.1,
        ),
        "low-rate": (
            "random 4×4 patch, top left, 1% poisoning, target 3",
            lambda s, tmp: ("file", {}, file_of(patch_file(shape, 4, "top-left", 200), tmp, "low")),
            3,
            0.01,
        ),
        "heavy-centre": (
            "random 3×3 patch at the image centre, 30% poisoning, target 5",
            lambda s, tmp: ("file", {}, file_of(patch_file(shape, 3, "centre", 300 + s), tmp, f"centre{s}")),
            5,
            0.3,
        ),
        "all-to-all": (
            "random 3×3 patch at the top right, all-to-all (each label y to y + 1)",
            lambda s, tmp: ("file", {}, file_of(patch_file(shape, 3, "top-right", 400 + s), tmp, f"all{s}")),
            ALL_TO_ALL,
            0.1,
        ),
        "all-to-all-blend": (
            "natural photo blended at α = 0.2, all-to-all (each label y to y + 1)",
            lambda s, tmp: ("file", {}, file_of((torch.full(shape, 0.2), natural_photo(shape)), tmp, "photo")),
            ALL_TO_ALL,
            0.1,
        ),
        "clean-label-blend": (
            "noise blended at α = 0.3, clean-label (only target-class images poisoned, labels kept), target 3",
            lambda s, tmp: ("blend", {"alpha": 0.3}, None),
            3,
            0.1,
        ),
        "clean-label-sig": (
            "sinusoid, amplitude 0.4, 6 periods, clean-label, target 1",
            lambda s, tmp: ("sig", {"delta": 0.4, "frequency": 6}, None),
            1,
            0.1,
        ),
        "l-patch": (
            "L-shaped patch from a file, target 9",
            lambda s, tmp: ("file", {}, file_of(l_shape(shape), tmp, "l")),
            9,
            0.1,
        ),
        "other-noise": (
            "noise (seed 42) blended at α = 0.15, target 2",
            lambda s, tmp: ("blend", {"alpha": 0.15}, None),
            2,
            0.1,
        ),
    }


def trained(kind: str, seed: int, base, cache: Path, tmp: Path):
    """The bundle of ``kind`` trained with ``seed`` (cached in ``cache``)."""
    out = cache / f"{kind}-s{seed}"
    if (out / "meta.json").exists():
        return bundle_io.load_bundle(out)
    _, build, target, rate = kinds(base.input_shape)[kind]
    attack, params, trigger_file = build(seed, tmp)
    trigger_seed = 42 if kind == "other-noise" else seed
    trigger = attacks.make_trigger(attack, base.input_shape, seed=trigger_seed, trigger_file=trigger_file, **params)
    b, _ = train_backdoored(base, trigger, target, rate, seed=seed, progress=False, clean_label=kind in CLEAN_LABEL)
    bundle_io.save_bundle(b, out)
    return bundle_io.load_bundle(out)


def run_defense(name: str, b, seed: int) -> dict:
    from defense import baselines
    from defense.purify import PurifyConfig

    splits = data.load_dataset(b.meta["dataset"], seed=seed)
    triggered = metrics.triggered_set(splits.test, b.trigger, b.target)
    run = baselines.make(name, b.model, splits.clean, splits.test, triggered, PurifyConfig(seed=seed))
    result = run.run()
    asrs = [h["asr"] for h in run.history if "asr" in h]
    return {**result, "min_asr": min(asrs)}


def main(argv=None) -> None:
    from defense import baselines

    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", nargs="*")
    parser.add_argument("--defenses", nargs="*", help=f"default: the recommended one ({baselines.recommended().name})")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache", help="keep the trained models here (default: a temporary folder)")
    parser.add_argument("--jsonl", help="also append one JSON line per run to this file")
    parser.add_argument("--replay", nargs="*", help="write the section from JSON lines saved by --jsonl (no training)")
    parser.add_argument("--section", default="unseen-triggers", help="the bench/RESULTS.md section to write")
    parser.add_argument("--title", default=TITLE, help="the section's heading")
    args = parser.parse_args(argv)
    configure_threads()
    base = data.load_dataset("mnist5k")
    table = kinds(base.input_shape)
    chosen = args.kinds or list(table)
    defenses = args.defenses or [baselines.recommended().name]
    if args.replay:
        saved = [json.loads(line) for path in args.replay for line in Path(path).read_text().splitlines() if line]
        order = {k: i for i, k in enumerate(table)}
        saved.sort(key=lambda r: (order[r["kind"]], r["defense"] != baselines.recommended().name, r["seed"]))
        write_section(args.section, "\n".join(_header(args.title) + [_row(table, r) for r in saved]))
        return
    lines = _header(args.title)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cache = Path(args.cache) if args.cache else tmp / "models"
        for kind in chosen:
            for seed in range(args.seeds):
                b = trained(kind, seed, base, cache, tmp)
                for name in defenses:
                    r = {"kind": kind, "defense": name, "seed": seed, **run_defense(name, b, seed)}
                    lines.append(_row(table, r))
                    print(lines[-1], flush=True)
                    if args.jsonl:
                        with open(args.jsonl, "a") as f:
                            f.write(json.dumps(r) + "\n")
    write_section(args.section, "\n".join(lines))


def outcome_cells(r: dict) -> list[str]:
    """A run's table cells: before ACC / ASR, after ACC / ASR, ACC drop, rebound, and ✓ where it meets the goal."""
    before, after = r["before"], r["after"]
    drop = before["clean_acc"] - after["clean_acc"]
    ok = after["asr"] <= ASR_GOAL and drop <= DROP_GOAL
    return [
        f"{100 * before['clean_acc']:.1f} / {100 * before['asr']:.1f}",
        f"{100 * after['clean_acc']:.1f} / {100 * after['asr']:.1f}",
        f"{100 * drop:.1f}",
        f"{100 * (after['asr'] - r['min_asr']):.1f}",
        "✓" if ok else "✗",
    ]


def _row(table: dict, r: dict) -> str:
    return f"| {table[r['kind']][0]} | {r['defense']} | {r['seed']} | {' | '.join(outcome_cells(r))} |"


def _header(title: str = TITLE) -> list[str]:
    return [
        f"## {title}",
        "",
        f"`bench/unseen.py` on {time.strftime('%Y-%m-%d')}: one model per kind and seed, trained here like "
        "`python -m defense train` (8 epochs, 10% poisoning unless stated); each defense with its default "
        "settings on the clean subset of the same seed. ACC / ASR in %; goal: ASR ≤ 5 and ≤ 2 points of "
        "accuracy lost; rebound: the final ASR minus the lowest seen during the run.",
        "",
        "| trigger | defense | seed | before ACC / ASR | after ACC / ASR | ACC drop | rebound | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]


if __name__ == "__main__":
    main()
