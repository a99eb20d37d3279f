"""One self-contained HTML report of a model: what it is, where its backdoor sits, and what every defense did.

The file opens offline: plotly.js is inlined once, every figure is embedded as data, and nothing is
fetched (no CDN, no web fonts, no external script or stylesheet). The figures are the app's own
builders (``ui.charts``, ``ui.curves``, ``ui.compare_charts``, all Streamlit-free), so the report
shows what the pages show. Sections: the model and its attack with sample images; the salience
heatmaps and the identification ROC; the chosen threshold with its preview and the pruning curve;
every purification run's curves; the comparison table and scatter; settings and versions.
"""

from __future__ import annotations

import copy
import html
import json
import math
import time
from types import SimpleNamespace

import pandas as pd
import plotly.io as pio
import torch

from . import ablation, compare, masking, metrics, neurons, purify, result_store, salience
from .registry import SCORES

RATIOS = [i / 10 for i in range(11)]
DEFAULT_THRESHOLD = ("benign", "ratio", purify.PurifyConfig().ratio, purify.PurifyConfig().scope)
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.8em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.92em;margin:.8em 0}th,td{border:1px solid #ddd;padding:4px 8px;
text-align:right}table.kv td{text-align:left}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
tr.paper td{background:#fff1f0;font-weight:600}.note{color:#555;font-size:.92em}
code,pre{background:#f6f6f6;padding:1px 4px;border-radius:3px}pre{padding:.6em;overflow-x:auto}
.figure{margin:.6em 0 1.4em}
"""


def _fig(fig, div_id: str) -> str:
    from ui.theme import style  # the app's look (Streamlit is imported only by its plot())

    style(fig)
    return (
        '<div class="figure">'
        + pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})
        + "</div>"
    )


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{text}</p>' if cls else f"<p>{text}</p>"


def _runs_for_figure(results: list[dict]):
    """Comparison runs as the objects ``ui.curves.runs_figure`` draws (label, color, records)."""
    from ui.compare_charts import defense_colors

    colors = defense_colors(list(dict.fromkeys(r["defense"] for r in results)))
    out = []
    for r in results:
        records = [{"step": s, "task_loss": v} for s, v in (r.get("loss") or []) if v is not None]
        records += [{**h, "task_loss": float("nan")} for h in r.get("history") or []]
        records.sort(key=lambda x: x["step"])
        if records:
            out.append(SimpleNamespace(label=r["defense"], color=colors[r["defense"]][0], records=records))
    return out


def _defenses_table(board: pd.DataFrame) -> str:
    head = (
        "<tr><th>defense</th><th>clean accuracy after</th><th>ASR after</th><th>accuracy lost</th>"
        "<th title='the first evaluated step with ASR ≤ 5% while clean accuracy is within 5 points of its start'>"
        "steps to ASR ≤ 5%, accuracy kept</th><th>seconds</th><th>seeds</th><th>Pareto front</th><th>status</th></tr>"
    )
    rows = []
    for r in board.itertuples():
        spread = r.seeds > 1

        def pm(v, s, spread=spread):
            return _pct(v) + (f" ± {100 * s:.1f}" if spread else "")

        steps = "never" if pd.isna(r.steps_to_goal) else f"{r.steps_to_goal:.0f}"
        if spread and not pd.isna(r.steps_to_goal):
            steps += f" ({r.reached}/{r.seeds})"
        name = html.escape(r.defense) + (" ★ paper" if r.paper else "") + (" (recommended)" if r.recommended else "")
        rows.append(
            f'<tr class="{"paper" if r.paper else ""}"><td title="{html.escape(r.label)}">{name}</td>'
            f"<td>{pm(r.clean_acc, r.clean_acc_spread)}</td><td>{pm(r.asr, r.asr_spread)}</td>"
            f"<td>{pm(r.acc_lost, r.acc_lost_spread)}</td><td>{steps}</td><td>{r.seconds:.1f}</td>"
            f"<td>{r.seeds}</td><td>{'yes' if r.pareto else ''}</td><td>{html.escape(r.status)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _kv_table(pairs: dict) -> str:
    return (
        "<table class='kv'>"
        + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs.items())
        + "</table>"
    )


def build_report(
    bundle,
    comparison: compare.Comparison,
    threshold: tuple[str, str, float, str] | None = None,
    extra_runs: list[dict] | None = None,
    scores: dict | None = None,
    truth: dict | None = None,
    data_root: str | None = None,
    progress: bool = False,
) -> str:
    """The report as one HTML string.

    ``comparison``: its first subset is the clean data of every section; its results (run, cached or shipped)
    fill the comparison. ``threshold``: (score, 'ratio'|'value', value, scope), the Threshold page's choice
    (default: the recommended marking). ``extra_runs``: the app's own purification runs (``Runner.report``).
    ``scores`` / ``truth``: already measured scores and ablation ground truth (measured here if missing).
    """
    from tqdm import tqdm

    from ui import palette
    from ui.charts import image_grid, layers_row
    from ui.compare_charts import asr_curves_figure, tradeoff_figure
    from ui.curves import pruning_figure, roc_figure, runs_figure, score_label

    subset = comparison.subsets[0]
    model = copy.deepcopy(bundle.model).eval()
    layers = salience.neuron_map(model)
    threshold = threshold or DEFAULT_THRESHOLD
    bar = tqdm(total=5, desc="report", unit="part", disable=not progress)
    parts: list[str] = []

    # -- the model and its attack
    ev = metrics.evaluate(model, subset.test, None, 0, triggered=subset.triggered)
    n = 8
    keep = bundle.target.flippable(subset.test.y)
    cx, cy = subset.test.x[keep][:n], subset.test.y[keep][:n]
    tx = subset.triggered.x[:n]
    pc, pt = metrics.predict(model, cx), metrics.predict(model, tx)
    samples = image_grid(
        [
            ("clean", cx.amax(1).numpy(), [f"{y} → {p}" for y, p in zip(cy.tolist(), pc.tolist())]),
            ("triggered", tx.amax(1).numpy(), [f"{y} → {p}" for y, p in zip(cy.tolist(), pt.tolist())]),
        ]
    )
    meta = bundle.meta
    parts += [
        "<h2>1. The model and its attack</h2>",
        _kv_table(
            {
                "model": bundle.name,
                "architecture": meta["architecture"]
                + (f" {meta.get('arch_kwargs')}" if meta.get("arch_kwargs") else ""),
                "dataset": f"{meta['dataset']} (input {meta['input_shape']}, {meta['num_classes']} classes)",
                "attack": bundle.describe_attack(),
                "clean accuracy": f"{_pct(ev['clean_acc'])} of {len(subset.test)} test images",
                "attack success rate": f"{_pct(ev['asr'])} of {len(subset.triggered)} triggered test images",
                "neurons scored": sum(nl.size for nl in layers.values()),
                "fingerprint": result_store.fingerprint(bundle),
            }
        ),
        _p("Sample test images, once clean and once with the trigger; titles read <i>true label → prediction</i>."),
        _fig(samples, "samples"),
    ]
    bar.update(1)

    # -- salience and identification
    scores = scores or {m: salience.compute(m, model, subset.clean, layers) for m in SCORES.names()}
    metric, mode, value, scope = threshold
    s = scores[metric]
    mask = masking.mark(s, ratio=value, scope=scope) if mode == "ratio" else masking.mark(s, threshold=value)
    parts += [
        "<h2>2. Which neurons look infected</h2>",
        _p(
            "Each square is a neuron (a conv channel or a hidden unit), coloured by its score normalized per layer "
            "(dark = most suspect); red outlines are the neurons marked by the chosen threshold (section 3)."
        ),
    ]
    shown = [m for m in SCORES.names() if m in scores]  # the app passes the slow scores only once measured
    for m in shown:
        raw = {ln: {score_label(m): v} for ln, v in scores[m].layers.items()}
        marked = mask if m == metric else {ln: torch.zeros(len(v), dtype=torch.bool) for ln, v in raw.items()}
        parts += [
            f"<h3>{html.escape(score_label(m))}</h3>",
            _fig(layers_row(scores[m].normalized("minmax"), raw, marked, "importance"), f"heat-{m}"),
        ]
    bar.update(1)
    truth = truth or ablation.ground_truth(model, layers, subset.test, subset.triggered, max_images=None)
    infected = truth["infected"]
    measured = truth.get("measured")  # a big model's truth is measured on a sample of its neurons
    keep = torch.cat([measured[ln] for ln in layers]) if measured is not None else None
    curves, quality = [], []
    for m in shown:
        sus = scores[m].suspicion()
        s_flat, p_flat = torch.cat([sus[ln] for ln in layers]), torch.cat([infected[ln] for ln in layers])
        if keep is not None:
            s_flat, p_flat = s_flat[keep], p_flat[keep]
        fpr, tpr = metrics.roc_curve(s_flat, p_flat)
        q = metrics.identification_quality(scores[m], infected, measured)
        curves.append((score_label(m), fpr, tpr, q["auc"]))
        quality.append((score_label(m), q))
    parts += [
        _p(
            "Ground truth by ablation: each neuron is zeroed on its own, and those whose removal most weakens the "
            f"trigger are labelled infected ({int(sum(int(v.sum()) for v in infected.values()))} neurons)."
        ),
        _fig(roc_figure(curves, score_label("benign"), [palette.score_color(m) for m in shown]), "roc"),
        "<table><tr><th>score</th><th>ROC AUC</th><th>precision at k</th></tr>"
        + "".join(
            f"<tr><td>{html.escape(lbl)}</td><td>{q['auc']:.3f}</td><td>{q['precision_at_k']:.3f}</td></tr>"
            for lbl, q in quality
        )
        + "</table>",
    ]
    bar.update(1)

    # -- the threshold and its preview
    pv = masking.preview(model, layers, mask, subset.test, subset.triggered)
    marked_n = neurons.marked_count(mask)
    total = sum(nl.size for nl in layers.values())
    curve = masking.pruning_curve(
        model,
        layers,
        [scores[s.name] for s in SCORES if s.curve],
        subset.test,
        subset.triggered,
        ratios=RATIOS,
        scope=scope,
    )
    how = (
        f"the {value:.0%} most suspect {'in each layer' if scope == 'layer' else 'overall'}"
        if mode == "ratio"
        else f"normalized importance ≤ {value:.2f}"
    )
    parts += [
        "<h2>3. The chosen threshold</h2>",
        _p(f"Marked by {html.escape(score_label(metric))}: {marked_n} of {total} neurons ({how})."),
        _kv_table(
            {
                "clean accuracy if the marked neurons are zeroed": _pct(pv["clean_acc"]),
                "attack success if zeroed": _pct(pv["asr"]),
            }
        ),
        _p(
            "Preview: the marked neurons' outputs set to zero, no fine-tuning. The pruning curve below zeroes a "
            "growing share of each layer's most suspect neurons.",
            "note",
        ),
        _fig(
            pruning_figure(
                curve, value if mode == "ratio" else marked_n / max(1, sum(nl.size for nl in layers.values()))
            ),
            "pruning",
        ),
    ]
    bar.update(1)

    # -- every run, and the comparison
    results = {k: v for k, v in comparison.results.items() if v.get("history")}
    order = [d.name for d in comparison.defenses]
    board = compare.leaderboard(results, comparison.defenses)
    parts += ["<h2>4. Every purification run</h2>"]
    for sub in comparison.subsets:
        runs = [results[(sub.seed, d)] for d in order if (sub.seed, d) in results]
        if runs:
            parts += [
                f"<h3>Clean subset seed {sub.seed}</h3>",
                _fig(runs_figure(_runs_for_figure(runs)), f"runs-{sub.seed}"),
            ]
    for i, r in enumerate(extra_runs or []):
        runs = [
            {
                **r,
                "defense": r.get("label") or r["defense"],
                "loss": [[h["step"], h.get("task_loss")] for h in r["history"] if h.get("step")],
                "history": [h for h in r["history"] if h.get("asr") is not None],
            }
        ]
        parts += [
            f"<h3>Run from the Purify page: {html.escape(runs[0]['defense'])}</h3>",
            _fig(runs_figure(_runs_for_figure(runs)), f"own-run-{i}"),
        ]
    if not results and not extra_runs:
        parts.append(_p("No purification has been run on this model yet."))
    parts += [
        "<h2>5. Every defense, side by side</h2>",
        _p(
            "Every registered defense on the same model and the same clean images "
            f"({len(comparison.subsets)} clean subset(s) of {subset.fraction:.0%} of the training set). Figures are "
            "means over the subsets, ± half their range; the paper's method is highlighted. Pareto front: no other "
            "defense has both a lower ASR and less accuracy lost."
        ),
        _defenses_table(board) if len(board) else _p("No comparison has been run yet."),
        _fig(tradeoff_figure(board), "tradeoff"),
        _fig(asr_curves_figure(results, order), "asr-curves"),
    ]
    bar.update(1)
    bar.close()

    # -- settings and versions
    sources = sorted({r.get("source", "this run") for r in comparison.results.values()})
    configs = {f"{name} (seed {seed})": r.get("config") for (seed, name), r in sorted(comparison.results.items())}
    env = result_store.environment()
    reproduce = (
        f"python -m defense report --bundle BUNDLE --seeds {len(comparison.subsets)} "
        f"--clean-fraction {subset.fraction:g} --out report.html"
        + (f" --steps {comparison.config.steps}" if comparison.config.steps != purify.PurifyConfig().steps else "")
    )
    parts += [
        "<h2>6. Settings and versions</h2>",
        _kv_table(
            {
                "clean subsets (seed = subset seed = fine-tuning seed)": ", ".join(
                    str(s.seed) for s in comparison.subsets
                ),
                "clean images per subset": len(subset.clean),
                "threshold": f"{metric}, {mode} {value}, scope {scope}",
                "comparison results from": ", ".join(sources),
                "python": env["python"],
                "platform": env["platform"],
                "torch threads / device": f"{env['torch_threads']} / {env['device']}",
                **{f"package {k}": v for k, v in env["packages"].items()},
                "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            }
        ),
        _p(f"To reproduce: <code>{html.escape(reproduce)}</code>"),
        "<details><summary>Base settings of every defense</summary><pre>"
        + html.escape(json.dumps(comparison.config.to_dict(), indent=1))
        + "</pre></details>",
        "<details><summary>Settings of each run (as run)</summary><pre>"
        + html.escape(json.dumps(configs, indent=1, default=str))
        + "</pre></details>",
    ]
    return _page(bundle.name, parts)


def _page(name: str, parts: list[str]) -> str:
    from plotly.offline import get_plotlyjs

    title = f"Backdoor Neuron Lab report: {html.escape(name)}"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{title}</title>"
        f"<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>"
        f"<h1>{title}</h1>"
        + _p(
            "Written by Backdoor Neuron Lab; every number below can be reproduced with the settings in section 6.",
            "note",
        )
        + "".join(parts)
        + "</body></html>"
    )
