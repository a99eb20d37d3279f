"""Speed of a full comparison (every registered defense) on a model the app has never seen, as the Compare page
runs it: one background thread with the app's torch thread setting, the page's thread polling it every second.

The model is a bundled one written to a .zip and read back under another name (as an upload is), with an
empty results cache, so nothing is answered from shipped or cached results. Goal: under 5 minutes on 2 CPU
cores. Writes the section 'compare-speed' of bench/RESULTS.md (wall time, CPU time, load average).
Run from the repository root: .venv/bin/python -m bench.compare_speed [--model NAME] [--seeds N]
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

from bench.sections import write_section
from defense import bundle as bundle_io
from defense import compare
from defense.paths import MODELS_DIR
from defense.runtime import configure_threads

GOAL_S = 300


def uploaded(name: str, tmp: Path) -> bundle_io.Bundle:
    b = bundle_io.load_bundle(MODELS_DIR / name)
    b.meta["name"] = "uploaded"
    path = bundle_io.save_bundle(b, tmp / "uploaded.zip")
    return bundle_io.load_bundle(path)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(name: str, seeds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        b = uploaded(name, Path(tmp))
        subsets = compare.subsets_for(b, list(range(seeds)), 0.05)
        known, _ = compare.known_results(b, subsets)
        assert not known, "the 'uploaded' model must not be answered from shipped results"
        comparison = compare.Comparison(b.model, subsets)
        load_before = os.getloadavg()[0]
        cpu0, t0 = cpu_seconds(), time.perf_counter()

        def work() -> None:
            configure_threads(share_with_server=True)  # what the app's threads use
            comparison.run()

        thread = threading.Thread(target=work)
        thread.start()
        while thread.is_alive():  # the page's polling: read the progress once a second
            comparison.progress()
            comparison.snapshot()
            thread.join(1.0)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        statuses = sorted(set(comparison.status.values()))
        return {
            "model": name,
            "seeds": seeds,
            "runs": len(comparison.status),
            "defenses": len(comparison.defenses),
            "wall": wall,
            "cpu": cpu,
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "statuses": statuses,
            "per_run": {n: r["seconds"] for (s, n), r in comparison.results.items() if s == 0},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="mnist-badnets")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.environ["BNL_CACHE"] = tempfile.mkdtemp(prefix="bnl-bench-cache-")  # empty cache: nothing known
    r = measure(args.model, args.seeds)
    ok = "✓" if r["wall"] < GOAL_S else "✗"
    per_run = ", ".join(f"{n} {s:.0f}" for n, s in r["per_run"].items())
    text = f"""## Compare: every defense on an uploaded model

`bench/compare_speed.py` on {datetime.date.today()}: all {r["defenses"]} registered defenses x {r["seeds"]} clean
subset(s) ({r["runs"]} runs, recommended settings, 300 steps each, CLP none) on `{r["model"]}` written to a .zip and
read back as an upload (empty cache, no shipped results), in one background thread with the app's torch setting
(1 thread; the other core is the server's), polled once a second as the Compare page does. {os.cpu_count()} CPU cores;
load average {r["load_before"]:.1f} when it started and {r["load_after"]:.1f} when it ended (the machine is shared:
a load above 2 means other work took part of the cores, and the wall time is then longer than on an idle machine).

| what | value | goal |
|---|---|---|
| full comparison, wall time | {r["wall"]:.0f} s | < {GOAL_S} s {ok} |
| CPU time it used | {r["cpu"]:.0f} s | |
| run statuses | {", ".join(r["statuses"])} | |

Seconds per run (wall): {per_run}.
"""
    print(text)
    if not args.no_write:
        write_section("compare-speed", text)


if __name__ == "__main__":
    main()
