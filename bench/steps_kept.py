"""Steps to ASR ≤ 5%, counted on ASR alone and with clean accuracy kept, from the shipped Compare results.

    python -m bench.steps_kept        (reads assets/results/*.json, measures nothing; writes a section)

The main benchmark's "steps to ASR ≤ 5%" column counts the first evaluated step with ASR ≤ 5%, whatever the clean
accuracy; early in fine-tuning a model is often broken for a while, and a broken model's ASR is 0% too. The
Compare page counts a step only when accuracy is also within ``compare.ACC_SLACK`` of its start. The benchmark's
runs keep no curves, but the shipped Compare results do (every defense, clean subset 0, the same settings), so
both counts are compared on them here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.sections import write_section
from defense import compare
from defense.paths import ROOT

PAIRS = [("bs-ar", "bs-l1"), ("bs-ar", "bs-l2"), ("bs-ar-kd", "bs-l1"), ("bs-ar-kd", "bs-l2"), ("nc-ar", "bs-ar")]


def _runs(path: Path) -> list[dict]:
    subsets = json.loads(path.read_text())["subsets"].values()
    return [r for s in subsets for r in (s["runs"].values() if isinstance(s["runs"], dict) else s["runs"])]


def _fmt(v: float) -> str:
    return "never" if math.isnan(v) else f"{v:.0f}"


def main() -> None:
    files = sorted((ROOT / "assets" / "results").glob("*.json"))
    steps: dict[tuple[str, str], tuple[float, float]] = {}
    for f in files:
        for r in _runs(f):
            steps[(f.stem, r["defense"])] = (
                compare.steps_to_goal(r["history"]),
                compare.steps_to_goal(r["history"], acc_slack=compare.ACC_SLACK),
            )
    models = [f.stem for f in files]
    defenses = list(dict.fromkeys(d for _, d in steps))
    lines = [
        "## Steps to ASR ≤ 5%: on ASR alone, and with clean accuracy kept",
        "",
        f"`python -m bench.steps_kept`: the shipped Compare results (`assets/results/`, clean subset 0, every defense "
        "with its default settings, evaluated every 10 steps), each run's first evaluated step with ASR ≤ 5% counted "
        "two ways: on ASR alone (the main benchmark's column above) / with clean accuracy also within "
        f"{100 * compare.ACC_SLACK:.0f} points of its start (the Compare page's and the report's column). Early in "
        "fine-tuning many runs pass through a broken model (10–40% accuracy on the PreAct-ResNet-18), whose ASR is "
        "0% too: the first count then credits a collapse, not a purification.",
        "",
        "| defense | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for d in defenses:
        cells = [" / ".join(_fmt(v) for v in steps[(m, d)]) if (m, d) in steps else "—" for m in models]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    changed = sum(not (a == b or (math.isnan(a) and math.isnan(b))) for a, b in steps.values())
    lines += ["", f"The two counts differ on {changed} of {len(steps)} runs.", ""]
    lines += [
        "| ratio of steps (mean over the models where both got there) | ASR alone | accuracy kept |",
        "|---|---|---|",
    ]
    for a, b in PAIRS:
        cells = []
        for which in (0, 1):
            both = [(steps[(m, a)][which], steps[(m, b)][which]) for m in models if (m, a) in steps and (m, b) in steps]
            both = [(x, y) for x, y in both if not (math.isnan(x) or math.isnan(y))]
            cells.append(
                f"{sum(x for x, _ in both) / sum(y for _, y in both):.2f} ({len(both)} models)" if both else "—"
            )
        lines.append(f"| {a} / {b} | {cells[0]} | {cells[1]} |")
    lines.append("")
    lines.append("One clean subset per model: a first look, not the benchmark's three seeds (its runs keep no curves).")
    write_section("steps-kept", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
