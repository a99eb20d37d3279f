"""``python -m defense``: train, evaluate, salience, identify, purify, import, list, bench, compare, report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import attacks, data, models
from . import bundle as bundle_io
from .cli_args import (  # noqa: F401 - the argument types, re-exported for the tests and scripts
    MAX_EPOCHS,
    MAX_STEPS,
    _data_root_needed,
    _epochs,
    _fraction,
    _integer,
    _json_object,
    _non_negative,
    _number,
    _positive_int,
    _seed,
    _steps,
    _target,
    check_out,
)
from .errors import UsageError
from .paths import RESULTS
from .registry import ATTACKS, DEFENSES, SCORES
from .runtime import configure_threads, interrupt_at_step_boundary
from .targets import ALL_TO_ALL, Target


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train_backdoored

    check_out(args.out)
    _data_root_needed(args.dataset, args.data_root)
    splits = data.load_dataset(args.dataset, args.data_root)
    try:
        target = Target.parse(args.target, splits.num_classes)
    except ValueError:
        raise UsageError(
            f"--target {args.target} is out of range: the dataset has classes 0..{splits.num_classes - 1} "
            f"(or '{ALL_TO_ALL}')"
        ) from None
    if args.clean_label and target.all_to_all:
        raise UsageError(f"--clean-label needs one target class, not '{ALL_TO_ALL}'")
    params = _json_object(args.attack_params, "--attack-params", '{"alpha": 0.2}')
    trigger = attacks.make_trigger(
        args.attack, splits.input_shape, seed=args.seed, trigger_file=args.trigger_file, **params
    )
    start = time.perf_counter()
    result, _ = train_backdoored(
        splits,
        trigger,
        target,
        args.poison_rate,
        arch=args.arch,
        epochs=args.epochs,
        seed=args.seed,
        progress=not args.quiet,
        arch_kwargs=_json_object(args.arch_kwargs, "--arch-kwargs", '{"width": 16}'),
        shift=args.shift,
        clean_label=args.clean_label,
        lr=args.lr,
    )
    result.meta["training"]["seconds"] = round(time.perf_counter() - start, 1)
    out = bundle_io.save_bundle(result, args.out)
    print(
        json.dumps(
            {
                "out": str(out),
                "clean_acc": result.meta["clean_acc"],
                "asr": result.meta["asr"],
                "seconds": result.meta["training"]["seconds"],
            }
        )
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics import evaluate

    b = bundle_io.load_bundle(args.bundle)
    _data_root_needed(b.meta["dataset"], args.data_root)
    splits = data.load_splits_for(b.meta, args.data_root)
    scores = evaluate(b.model, splits.test, b.trigger, b.target)
    if args.json:
        print(json.dumps(scores))
    else:
        print(f"{b.name}: clean accuracy {scores['clean_acc']:.2%}, attack success rate {scores['asr']:.2%}")
    return 0


def cmd_salience(args: argparse.Namespace) -> int:
    from . import salience

    out = check_out(args.out, folder_ok=False)
    b = bundle_io.load_bundle(args.bundle)
    _data_root_needed(b.meta["dataset"], args.data_root)
    splits = data.load_splits_for(
        b.meta, args.data_root, seed=args.seed, clean_fraction=args.clean_fraction, need_clean=True
    )
    metrics_wanted = SCORES.names() if args.metric == "all" else [args.metric]
    layers = salience.neuron_map(b.model)
    frame = salience.scores_frame([salience.compute(m, b.model, splits.clean, layers) for m in metrics_wanted])
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        frame.to_csv(partial, index=False)
        partial.replace(out)  # atomic: an interrupted run leaves no half-written CSV
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {len(frame)} neurons x {len(metrics_wanted)} metric(s) to {args.out}", file=sys.stderr)
    return 0


def cmd_purify(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from . import baselines
    from .metrics import triggered_set
    from .purify import Purification, PurifyConfig
    from .results import purified_bundle, run_report

    if args.defense is not None and (args.metric is not None or args.reg is not None):
        raise UsageError(f"--defense {args.defense} sets its own score and regularizer: leave out --metric and --reg")
    if args.out:
        check_out(args.out)
    b = bundle_io.load_bundle(args.bundle)
    _data_root_needed(b.meta["dataset"], args.data_root)
    defaults = PurifyConfig()
    overrides = {
        k: v
        for k, v in {
            "metric": args.metric,
            "reg": args.reg,
            "ratio": args.ratio,
            "steps": args.steps,
            "seed": args.seed,
            "lam": args.lam,
            "lr": args.lr,
            "scope": args.scope,
            "schedule": args.schedule,
        }.items()
        if v is not None
    }
    try:
        config = replace(defaults, **overrides).validate()
    except ValueError as err:
        raise UsageError(str(err)) from None
    splits = data.load_splits_for(
        b.meta, args.data_root, seed=config.seed, clean_fraction=args.clean_fraction, need_clean=True
    )
    triggered = triggered_set(splits.test, b.trigger, b.target)
    defense = args.defense
    if defense is None and args.metric is None and args.reg is None:
        defense = baselines.recommended().name  # no options: the recommended defense
    entry = DEFENSES[defense] if defense is not None else None
    unused = [f"--{k}" for k in ("ratio", "scope", "lam") if getattr(args, k) is not None]  # --metric is refused above
    if entry is not None and entry.marking is None and unused and not args.quiet:
        print(f"note: {defense} marks no neurons; {', '.join(unused)} not used", file=sys.stderr)
    if entry is not None and entry.marking is not None and SCORES[entry.marking[0]].cost == "slow" and not args.quiet:
        print(f"{defense}: measuring {SCORES[entry.marking[0]].label} first (slow on a CPU) ...", file=sys.stderr)
    marking_started = time.perf_counter()
    if defense is None:  # a score or penalty of one's own, with the recommended fine-tuning
        run = Purification(b.model, splits.clean, splits.test, triggered, config)
    else:
        run = baselines.make(defense, b.model, splits.clean, splits.test, triggered, config)
    marking_seconds = time.perf_counter() - marking_started
    config = run.config  # a defense may set the score, regularizer, distillation or steps
    with (
        interrupt_at_step_boundary() as check_interrupt,
        tqdm(total=config.steps, desc="purify", unit="step", disable=args.quiet) as bar,
    ):
        for record in run:
            check_interrupt()
            bar.update(1 if record["step"] else 0)
            if "asr" in record:
                bar.set_postfix(acc=f"{record['clean_acc']:.3f}", asr=f"{record['asr']:.3f}")
    report = run_report(run.history, config, context={"defense": defense} if defense else None)
    report["marking_seconds"] = round(marking_seconds, 2)  # before the first step: e.g. nc-ar's trigger reversal
    if args.out:
        name = Path(args.out).stem
        purified = purified_bundle(b, run.model, name=name, after=report["after"], config=config, defense=defense)
        report["out"] = str(bundle_io.save_bundle(purified, args.out))
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{b.name}: accuracy {report['before']['clean_acc']:.2%} -> {report['after']['clean_acc']:.2%}, "
            f"attack success {report['before']['asr']:.2%} -> {report['after']['asr']:.2%} "
            f"({report['steps']} steps, {report['seconds']} s, and {report['marking_seconds']} s marking first)"
        )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from . import backdoorbench, salience

    if args.format != "backdoorbench":
        raise UsageError(f"unknown --format {args.format!r}: expected backdoorbench")
    check_out(args.out)
    _data_root_needed(args.dataset, args.data_root)
    params = _json_object(args.attack_params, "--attack-params", '{"size": 3}')
    b = backdoorbench.import_bundle(
        args.file, args.dataset, args.data_root, args.attack, args.target, params, args.trigger_file, args.seed
    )
    b.meta["name"] = Path(args.out).stem
    out = bundle_io.save_bundle(b, args.out)
    neurons = sum(nl.size for nl in salience.neuron_map(b.model).values())
    if args.json:
        print(json.dumps({"out": str(out), "architecture": b.meta["architecture"], "neurons": neurons}))
    else:
        print(
            f"wrote {out}: {b.meta['architecture']} {b.meta['arch_kwargs']}, {neurons} neurons; clean accuracy "
            f"{b.meta['clean_acc']:.2%}, attack success {b.meta['asr']:.2%} on {args.dataset}"
        )
    return 0


TABLES_START, TABLES_END = "<!-- registry tables: python -m defense list --update README.md -->", "<!-- /registry -->"


def cmd_identify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .identify import identify

    b = bundle_io.load_bundle(args.bundle)
    splits = data.load_splits_for(b.meta, args.data_root, seed=args.seed)
    # one step per measurement: the ground truth, then each score (the slow ones take minutes on a CPU)
    with tqdm(total=1 + len(SCORES.names()), desc="identify", unit="measurement", disable=args.quiet) as bar:
        started: list[str] = []

        def stage(name: str) -> None:  # called as each starts: the one before it is done
            bar.update(1 if started else 0)
            started.append(name)
            bar.set_postfix_str(name)

        report = identify(b, splits, stage=stage)
        bar.update(1)
    if args.json:
        print(json.dumps(report))
    else:
        g = report["ground_truth"]
        print(
            f"{b.name}: {g['infected_ablation']} of {g['neurons']} neurons infected (ablation); "
            f"TAC agrees with AUC {g['tac_auc_vs_ablation']:.2f}, top-k overlap {g['top_k_overlap']:.0%}"
        )
        for name, q in report["scores"].items():
            print(
                f"  {name:14s} AUC {q['auc']:.2f}  precision@k {q['precision_at_k']:.2f}  AUC vs TAC {q['auc_tac']:.2f}"
            )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import markdown_tables

    tables = markdown_tables()
    if args.update is None:
        print(tables, end="")
        return 0
    path = Path(args.update)
    text = path.read_text()
    if TABLES_START not in text or TABLES_END not in text:
        raise UsageError(f"{path} has no block between {TABLES_START} and {TABLES_END}")
    head, rest = text.split(TABLES_START, 1)
    path.write_text(head + TABLES_START + "\n" + tables + TABLES_END + rest.split(TABLES_END, 1)[1])
    print(f"updated the registry tables in {path}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    run_bench(
        seeds=args.seeds,
        models=args.models,
        out=args.out,
        defenses=args.defenses,
        identification=not args.keep_identification,
    )
    return 0


def cmd_compare(args) -> int:
    from .compare_cli import run_compare

    return run_compare(args)


def cmd_report(args) -> int:
    from .compare_cli import run_report

    return run_report(args)


CLEAN_HELP = f"share of the training set the defender holds (it must leave at least {data.MIN_CLEAN_IMAGES} images)"


class OneLineErrors(argparse.ArgumentParser):
    """Bad arguments end with one line (``prog: error: ...``) and exit code 2, not argparse's usage block first."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="python -m defense", description=__doc__)  # its subcommands' parsers too
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a backdoored model and write a bundle")
    p.add_argument("--dataset", default="mnist5k", choices=data.DATASETS)
    p.add_argument("--data-root", help="folder of a local CIFAR-10 or ImageFolder dataset")
    p.add_argument("--arch", default=models.DEFAULT_ARCH, choices=models.architectures())
    p.add_argument("--attack", required=True, choices=ATTACKS.names())
    p.add_argument("--attack-params", help="JSON object of trigger parameters, e.g. '{\"alpha\": 0.2}'")
    p.add_argument("--trigger-file", help="safetensors with 'mask' and 'pattern' for --attack file")
    p.add_argument(
        "--target", type=_target, default=0, help=f"the label triggered images go to, or '{ALL_TO_ALL}' (y -> y+1)"
    )
    p.add_argument("--poison-rate", type=_fraction, default=0.1)
    p.add_argument("--epochs", type=_epochs, default=8, help=f"at most {MAX_EPOCHS}")
    p.add_argument("--arch-kwargs", help="JSON object of architecture options, e.g. '{\"width\": 16}'")
    p.add_argument("--shift", type=_integer, default=0, help="augment clean images by random shifts of up to N px")
    p.add_argument(
        "--clean-label",
        action="store_true",
        help="poison images of the target class only and keep their labels (as SIG does); the rate stays a share "
        "of the whole training set, capped at that class's size",
    )
    p.add_argument("--lr", type=_non_negative, default=0.05, help="peak learning rate (one-cycle)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="clean accuracy and attack success rate of a bundle")
    p.add_argument("--bundle", required=True)
    p.add_argument("--data-root")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    from .purify import REGULARIZERS, SCHEDULES

    p = sub.add_parser("salience", help="per-neuron scores of a bundle as CSV")
    p.add_argument("--bundle", required=True)
    p.add_argument("--metric", default="benign", choices=(*SCORES.names(), "all"))
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=_seed, default=0, help="seed of the defender's clean subset")
    p.add_argument("--clean-fraction", type=_fraction, default=data.CLEAN_FRACTION, help=CLEAN_HELP)
    p.add_argument("--data-root")
    p.set_defaults(func=cmd_salience)

    p = sub.add_parser("purify", help="identify and purify infected neurons (defaults are the recommended settings)")
    p.add_argument("--bundle", required=True)
    p.add_argument(
        "--defense",
        choices=DEFENSES.names(),
        help="a registered defense (default: the recommended one; bs-ar is the paper's BS + AR)",
    )
    p.add_argument("--metric", choices=SCORES.names(), help="mark with this score (with --reg: no defense entry)")
    p.add_argument("--reg", choices=REGULARIZERS)
    p.add_argument("--ratio", type=_fraction, help="share of neurons to mark in each layer")
    p.add_argument("--scope", choices=("layer", "global"))
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--steps", type=_steps, help=f"at most {MAX_STEPS:,}")
    p.add_argument("--lam", type=_non_negative, help="penalty strength λ")
    p.add_argument("--lr", type=_number, help="learning rate")
    p.add_argument("--seed", type=_seed)
    p.add_argument("--clean-fraction", type=_fraction, default=data.CLEAN_FRACTION, help=CLEAN_HELP)
    p.add_argument("--data-root")
    p.add_argument("--out", help="write the purified bundle here (directory, or .zip)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_purify)

    p = sub.add_parser("identify", help="how well every score finds the infected neurons (trigger known)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--data-root")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the defender's clean subset")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser("import", help="a bundle from a BackdoorBench attack_result.pt / defense_result.pt")
    p.add_argument("file")
    p.add_argument("--format", default="backdoorbench", choices=("backdoorbench",))
    p.add_argument("--dataset", required=True, choices=data.DATASETS)
    p.add_argument("--data-root", help="folder of a local CIFAR-10 or ImageFolder dataset")
    p.add_argument(
        "--attack", required=True, choices=ATTACKS.names(), help="the trigger (BackdoorBench keeps only PNGs)"
    )
    p.add_argument("--attack-params", help="JSON object of trigger parameters")
    p.add_argument("--trigger-file", help="safetensors with 'mask' and 'pattern' for --attack file")
    p.add_argument(
        "--target", type=_target, required=True, help=f"the attack's target label, or '{ALL_TO_ALL}' (all2all)"
    )
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("list", help="every score, defense, attack and architecture, as markdown tables")
    p.add_argument("--update", metavar="FILE", help="rewrite the registry block of FILE (README.md) instead")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("bench", help="every defense x every bundled model x seeds -> bench/RESULTS.md")
    p.add_argument("--seeds", type=_positive_int, default=3)
    p.add_argument(
        "--models",
        nargs="*",
        help="bundle names under assets/models (default: the four small CNNs; add mnist-preact-badnets by name)",
    )
    p.add_argument("--defenses", nargs="*", choices=DEFENSES.names(), help="defense names (default: all)")
    p.add_argument(
        "--keep-identification",
        action="store_true",
        help="do not measure the scores again: keep the identification rows saved by an earlier run",
    )
    p.add_argument("--out", default=str(RESULTS))
    p.set_defaults(func=cmd_bench)

    from .compare_cli import add_compare_arguments

    p = sub.add_parser("compare", help="every registered defense on one model, side by side (cached per model)")
    add_compare_arguments(p, _positive_int, _fraction)
    p.add_argument("--out", help="also write the results file here (e.g. assets/results/NAME.json)")
    p.add_argument("--json", action="store_true", help="print the leaderboard as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="a self-contained offline HTML report of one model")
    add_compare_arguments(p, _positive_int, _fraction)
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        configure_threads()
        return args.func(args)
    except KeyboardInterrupt:  # outputs are written to a temporary name and renamed at the end: nothing partial
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except (bundle_io.BundleError, attacks.TriggerError, data.DataError, UsageError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as err:
        print(f"error: a JSON argument is malformed ({err})", file=sys.stderr)
        return 2
    except ValueError as err:  # the library's own argument checks (e.g. Purification's), in one line
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # an --out path that cannot be written, a file that cannot be read
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: {err.strerror or _one_line(err)}{where}", file=sys.stderr)
        return 2


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__
