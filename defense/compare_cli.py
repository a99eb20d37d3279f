"""``python -m defense compare`` and ``python -m defense report``: the comparison and the HTML report from the CLI."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from . import bundle as bundle_io
from . import compare, data


def add_compare_arguments(p, positive_int, fraction) -> None:
    p.add_argument("--bundle", required=True)
    p.add_argument("--data-root")
    p.add_argument("--seeds", type=positive_int, default=1, help="clean subsets (seeds 0..N-1), e.g. 3 for a spread")
    p.add_argument("--clean-fraction", type=fraction, default=data.CLEAN_FRACTION)
    p.add_argument("--steps", type=positive_int, help="fine-tuning steps of every defense (default: recommended)")
    p.add_argument("--defenses", nargs="*", help="defense names (default: every registered one)")
    p.add_argument("--no-cache", action="store_true", help="run everything again, ignoring cached results")
    p.add_argument("--quiet", action="store_true")


def settings_from(args):
    config = compare.base_settings()
    if args.steps is not None:
        config = replace(config, steps=args.steps, eval_every=min(config.eval_every, args.steps))
    return config.validate()


def comparison_from(args, bundle):
    """The Comparison the arguments ask for, with known (cached or shipped) runs filled in."""
    from .errors import UsageError

    entries = compare.registered()
    if args.defenses:
        names = [e.name for e in entries]
        unknown = [d for d in args.defenses if d not in names]
        if unknown:
            raise UsageError(f"unknown defense(s) {', '.join(unknown)}: expected some of {', '.join(names)}")
        entries = [e for e in entries if e.name in args.defenses]
    config = settings_from(args)
    subsets = compare.subsets_for(bundle, list(range(args.seeds)), args.clean_fraction, args.data_root)
    known = {} if args.no_cache else compare.known_results(bundle, subsets, config)[0]
    return compare.Comparison(bundle.model, subsets, entries, config, known)


def run_with_bar(comparison, quiet: bool, desc: str = "compare", on_end=None) -> None:
    """Run with a progress bar on stderr; ``on_end()`` after each run (to save as it goes)."""
    from tqdm import tqdm

    todo = len(comparison.todo)
    with tqdm(total=todo, desc=desc, unit="run", disable=quiet or todo == 0, file=sys.stderr) as bar:
        for event in comparison:
            if event["event"] == "step":
                done, steps = comparison.current_step()
                bar.set_postfix_str(f"{event['defense']} (seed {event['seed']}) step {done}/{steps}", refresh=False)
            elif event["event"] == "end":
                bar.update(1)
                if on_end is not None:
                    on_end()


def run_compare(args) -> int:
    b = bundle_io.load_bundle(args.bundle)
    comparison = comparison_from(args, b)
    out = Path(args.out) if args.out else None
    run_with_bar(comparison, args.quiet, on_end=lambda: compare.save_results(b, comparison, out))
    compare.save_results(b, comparison, out)
    board = compare.leaderboard(comparison.results, comparison.defenses)
    if args.json:
        print(board.to_json(orient="records"))
    else:
        shown = board[["defense", "clean_acc", "asr", "acc_lost", "steps_to_goal", "seconds", "status"]]
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    failed = [r for r in comparison.results.values() if r["status"] == "error"]
    for r in failed:
        print(f"warning: {r['defense']} (seed {r['seed']}) failed: {r['error']}", file=sys.stderr)
    return 0


def run_report(args) -> int:
    from . import report_html

    b = bundle_io.load_bundle(args.bundle)
    comparison = comparison_from(args, b)
    run_with_bar(comparison, args.quiet, on_end=lambda: compare.save_results(b, comparison))
    html = report_html.build_report(b, comparison, data_root=args.data_root, progress=not args.quiet)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    print(json.dumps({"out": str(out), "bytes": len(html.encode())}))
    return 0
