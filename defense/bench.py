"""``python -m defense bench``: every defense x every bundled model x seeds, into bench/RESULTS.md.

Each seed draws its own defender clean subset and fine-tuning order; every defense of a
seed starts from the same bundled model and sees the same clean images, so the figures
in one table are side by side in one run.

Every run's figures are also kept as CSV beside the results (``bench_runs.csv``,
``bench_identification.csv``): a later ``bench --defenses X`` (or ``--models``) measures only
those and rewrites the tables with the other rows read back, so changing one defense's
settings does not cost the whole benchmark again.
"""

from __future__ import annotations

import platform
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from . import baselines, data, metrics, salience
from . import bundle as bundle_io
from .ablation import ground_truth as ablation_truth
from .compare import steps_to_goal  # one goal for the bench and the Compare page
from .neurons import NeuronLayer, neuron_map
from .paths import MODELS_DIR, RESULTS, benchmark_models
from .purify import PurifyConfig
from .registry import DEFENSES, SCORES

PEERS = """BackdoorBench leaderboard, CIFAR-10, PreAct-ResNet18, defender holds 5% clean data (ACC / ASR in %),
quoted from ../shared/GUIDE.md for context only (different data set and model, not run here):

| attack | none | FT | FP | NAD | ANP | CLP |
|---|---|---|---|---|---|---|
| BadNets 10% | 91.3 / 95.0 | 90.0 / 1.5 | 91.3 / 57.1 | 89.9 / 2.1 | 84.2 / 0.7 | 90.1 / 77.6 |
| Blended 10% | 93.5 / 99.9 | 92.8 / 96.1 | 93.2 / 99.3 | 92.2 / 97.7 | 86.6 / 2.2 | 91.3 / 99.7 |
"""


def identification_rows(
    model: nn.Module, clean: data.TensorData, layers: dict[str, NeuronLayer], infected: dict[str, torch.Tensor]
) -> list[dict]:
    """ROC AUC and precision at k of every registered score against the measured infected neurons."""
    return [
        {"metric": name, **metrics.identification_quality(salience.compute(name, model, clean, layers), infected)}
        for name in SCORES.names()
    ]


def run_bench(
    seeds: int = 3,
    models: list[str] | None = None,
    out: str | Path = RESULTS,
    defenses: list[str] | None = None,
    eval_every: int = 10,
    identification: bool = True,
) -> pd.DataFrame:
    """Every defense × model × seed into ``out``; ``identification=False`` keeps the saved identification rows
    (a re-run of some defenses only, with the scores unchanged)."""
    models = models or benchmark_models()
    defenses = defenses or DEFENSES.names()
    rows, ident = [], []
    total = len(models) * seeds * len(defenses)
    bar = tqdm(total=total, desc="bench", unit="run")
    for name in models:
        b = bundle_io.load_bundle(MODELS_DIR / name)
        for seed in range(seeds):
            splits = data.load_dataset(b.meta["dataset"], seed=seed)
            triggered = metrics.triggered_set(splits.test, b.trigger, b.target)
            layers = neuron_map(b.model)
            t0 = time.perf_counter()
            salience.compute("benign", b.model, splits.clean, layers)
            bs_seconds = time.perf_counter() - t0
            if identification:
                if seed == 0:
                    truth = ablation_truth(b.model, layers, splits.test, triggered, max_images=None)
                rows_of_seed = identification_rows(b.model, splits.clean, layers, truth["infected"])
                ident += [{"model": name, "seed": seed, **row} for row in rows_of_seed]
            for defense in defenses:
                config = replace(PurifyConfig(), seed=seed, eval_every=eval_every)
                t0 = time.perf_counter()  # marking included (a score, a trigger reversal, ANP's masks)
                run = baselines.make(defense, b.model, splits.clean, splits.test, triggered, config)
                result = run.run()
                seconds = time.perf_counter() - t0
                rows.append(
                    {
                        "model": name,
                        "seed": seed,
                        "defense": defense,
                        "acc_before": result["before"]["clean_acc"],
                        "asr_before": result["before"]["asr"],
                        "acc_after": result["after"]["clean_acc"],
                        "asr_after": result["after"]["asr"],
                        "seconds": seconds,
                        "steps": result["steps"],
                        "steps_to_goal": steps_to_goal(run.history),
                        "bs_seconds": bs_seconds,
                    }
                )
                bar.update(1)
    bar.close()
    out = Path(out)
    frame = merge_with_kept(pd.DataFrame(rows), out.with_name(RUNS_CSV), ["model", "defense", "seed"])
    ident = merge_with_kept(
        pd.DataFrame(ident, columns=["model", "seed", "metric"]) if not ident else pd.DataFrame(ident),
        out.with_name(IDENT_CSV),
        ["model", "metric", "seed"],
    )
    # saved rows of a defense or score no longer registered (renamed, removed) are left out
    frame = frame[(frame.seed < seeds) & frame.defense.isin(DEFENSES.names())]
    ident = ident[(ident.seed < seeds) & ident.metric.isin(SCORES.names())]
    write_results(frame, ident, out, seeds, [m for m in SCORES.names() if m in set(ident.metric)])
    return frame


RUNS_CSV, IDENT_CSV = "bench_runs.csv", "bench_identification.csv"


def merge_with_kept(new: pd.DataFrame, path: Path, key: list[str]) -> pd.DataFrame:
    """``new`` plus the rows saved at ``path`` that ``new`` does not measure again (same ``key``), saved back.

    Rows are ordered as the registries and the bundled models are, so a partial re-run leaves the table's order.
    """
    if path.exists():
        kept = pd.read_csv(path)
        fresh = set(map(tuple, new[key].astype(str).values))
        kept = kept[[tuple(k) not in fresh for k in kept[key].astype(str).values]]
        new = pd.concat([kept, new], ignore_index=True)
    models = {m: i for i, m in enumerate(dict.fromkeys([*benchmark_models(), *new.model]))}
    names = {n: i for i, n in enumerate(dict.fromkeys([*DEFENSES.names(), *SCORES.names(), *new[key[1]]]))}
    new = new.sort_values(key, key=lambda c: c.map(models if c.name == "model" else names if c.name == key[1] else int))
    new = new.reset_index(drop=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    new.to_csv(path, index=False)
    return new


def _pm(series: pd.Series, scale: float = 100, digits: int = 1) -> str:
    """mean ± half the range (spread over seeds)."""
    if series.isna().all():
        return "never"
    s = series.dropna()
    spread = (s.max() - s.min()) / 2
    text = f"{s.mean() * scale:.{digits}f} ± {spread * scale:.{digits}f}"
    return text + (f" ({s.size}/{series.size})" if s.size < series.size else "")


def write_results(frame: pd.DataFrame, ident: pd.DataFrame, out: Path, seeds: int, scores: list[str]) -> None:
    ours = baselines.recommended().name
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m defense bench` on {time.strftime('%Y-%m-%d')}; "
        f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, device {'cuda' if torch.cuda.is_available() else 'cpu'}. "
        f"{seeds} seeds per cell (each seed its own clean subset); figures are mean ± half-range over seeds, "
        "accuracy (ACC) and attack success rate (ASR) in % on the model's test split. "
        "The seconds column is the wall time of the whole defense, its marking included (a score, a trigger "
        "reversal, ANP's masks), on a shared 2-core machine (other work ran beside it); "
        "uncontended timings are in the 'Library speed' section below.",
        "",
        "## Defenses on every bundled model",
        "",
        "| model | defense | ACC before | ASR before | ACC after | ASR after | ACC drop "
        "| steps to ASR ≤ 5% (ASR alone: bench/steps_kept.py) | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, defense), g in frame.groupby(["model", "defense"], sort=False):
        lines.append(
            f"| {model} | {defense} | {_pm(g.acc_before)} | {_pm(g.asr_before)} | {_pm(g.acc_after)} | "
            f"{_pm(g.asr_after)} | {_pm(g.acc_before - g.acc_after)} | {_pm(g.steps_to_goal, 1, 0)} | "
            f"{_pm(g.seconds, 1, 1)} |"
        )
    lines += [
        "",
        f"## Goal check: {ours} (the recommended defense) with default settings",
        "",
        "Goal: ASR ≤ 2% and clean-accuracy drop ≤ 1 point on every model and seed.",
        "",
    ]
    for model, g in frame[frame.defense == ours].groupby("model", sort=False):
        ok = (g.asr_after <= 0.02) & (g.acc_before - g.acc_after <= 0.01)
        lines.append(
            f"- {model}: {int(ok.sum())}/{len(g)} seeds meet the goal "
            f"(ASR {_pm(g.asr_after)}, drop {_pm(g.acc_before - g.acc_after)} points)"
        )
    lines += [
        "",
        "## Ratios (mean over models and seeds)",
        "",
        "A ratio below 1 means the first defense needs fewer steps, or leaves a lower ASR, than the second.",
        "",
        "| comparison | steps to ASR ≤ 5% (ASR alone) | final ASR | final ACC |",
        "|---|---|---|---|",
    ]
    means = frame.groupby("defense")[["steps_to_goal", "asr_after", "acc_after"]].mean()
    for b in DEFENSES.names():
        a = ours
        if b != a and a in means.index and b in means.index:

            def ratio(col, a=a, b=b):
                x, y = means.loc[a, col], means.loc[b, col]
                return "n/a" if pd.isna(x) or pd.isna(y) or y == 0 else f"{x / y:.2f}"

            lines.append(f"| {a} / {b} | {ratio('steps_to_goal')} | {ratio('asr_after')} | {ratio('acc_after')} |")
    paper = next((d.name for d in DEFENSES if d.paper), None)
    for a in DEFENSES.names():  # and every defense against the paper's own method
        b = paper
        if b is not None and a not in (b, ours) and a in means.index and b in means.index:

            def ratio(col, a=a, b=b):
                x, y = means.loc[a, col], means.loc[b, col]
                return "n/a" if pd.isna(x) or pd.isna(y) or y == 0 else f"{x / y:.2f}"

            lines.append(f"| {a} / {b} | {ratio('steps_to_goal')} | {ratio('asr_after')} | {ratio('acc_after')} |")
    lines += [
        "",
        "## Identification of infected neurons",
        "",
        "Ground truth by ablation (defense/ablation.py `ground_truth`); AUC 0.5 is chance.",
        "",
        "| model | " + " | ".join(f"{m} AUC" for m in scores) + " | " + " | ".join(f"{m} P@k" for m in scores) + " |",
        "|---|" + "---|" * (2 * len(scores)),
    ]
    for model, g in ident.groupby("model", sort=False):
        by = g.groupby("metric")
        lines.append(
            f"| {model} | "
            + " | ".join(_pm(by.get_group(m).auc, 1, 2) for m in scores)
            + " | "
            + " | ".join(_pm(by.get_group(m).precision_at_k, 1, 2) for m in scores)
            + " |"
        )
    lines += ["", "## Peers, for context", "", PEERS]
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    marker = "<!-- other benchmarks below are kept by bench/ scripts -->"
    if out.exists() and marker in out.read_text():
        text += "\n" + marker + out.read_text().split(marker, 1)[1]
    out.write_text(text)
