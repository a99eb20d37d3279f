"""How the cost of each step grows with model size: small CNN, PreAct-ResNet-18 at widths 8, 16, 32, 64.

Steps, each on the embedded digits (1×28×28) with the app's data sizes:
- salience: benign salience over the defender's clean subset (200 images);
- preview: clean accuracy and ASR with 10% of neurons zeroed by hook (1,000 test + 900 triggered images);
- preview (app): the same on the subsets the app previews on (defense/cost.py ``preview_sets``: as many images
  as 10^10 MACs per set allow, at least 200), with the images used;
- one purification step (batch 64, AR penalty, distillation);
- ground truth (app): what the app and ``identify`` run, measured whole: ``ablation.ground_truth`` with the
  images and neuron sample of ``ablation.plan`` (a budget of neuron × images), with the images and neurons used;
- ground truth: the ablation of every neuron on 256 triggered + 256 clean images, both as
  metrics.backdoor_ground_truth does it (hooks, whole model per neuron) and as defense/ablation.py does it
  (torch.fx: only the part after the neuron reruns). Measured on a sample of
  neurons per layer (``SAMPLE``) and scaled to the full count (it is linear in the number of neurons of a
  layer, and each layer's neurons cost the same), so the wide models' figure is an extrapolation; the
  table says which.

Weights are random (cost does not depend on them). Growth is fitted as time ∝ parameters^k by least squares
on log-log; the plot is a hand-written SVG (kaleido is not installed), bench/scaling.svg.

Run from the repository root: .venv/bin/python -m bench.scaling  (writes the 'scaling' section of RESULTS.md)
"""

from __future__ import annotations

import datetime
import math
import os
import statistics
import time

import torch

from bench.sections import write_section
from defense import ablation, data, metrics, models, salience
from defense.cost import preview_sets
from defense.masking import mark, preview
from defense.neurons import neuron_map, neuron_masking
from defense.paths import ROOT
from defense.purify import Purification, PurifyConfig
from defense.runtime import configure_threads

CONFIGS = [
    ("small_cnn", "small_cnn", {}),
    ("preact w8", "preactresnet18", {"width": 8}),
    ("preact w16", "preactresnet18", {"width": 16}),
    ("preact w32", "preactresnet18", {"width": 32}),
    ("preact w64", "preactresnet18", {"width": 64}),
]
SAMPLE = 1  # neurons ablated per layer for the ground-truth estimate
GT_IMAGES, GT_MEASURED = 256, 64  # the ablation uses 256 + 256 images; measured on 64 + 64 and scaled (linear)
STEPS = ("salience", "preview", "preview (app)", "purify step", "ground truth", "ground truth (fx)", "truth (app)")
SVG = ROOT / "bench" / "scaling.svg"


def timed(fn, repeat: int = 3) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def ground_truth_estimate(model, layers, test, triggered) -> tuple[float, bool]:
    """Seconds for the full ablation, scaled from SAMPLE neurons per layer and GT_MEASURED images."""
    loss = torch.nn.CrossEntropyLoss()
    k = GT_MEASURED
    xt, yt, xc, yc = triggered.x[:k], triggered.y[:k], test.x[:k], test.y[:k]
    total, exact = 0.0, k == GT_IMAGES
    with torch.no_grad():
        for name, nl in layers.items():
            n = min(SAMPLE, nl.size)
            exact &= n == nl.size
            t = time.perf_counter()
            for i in range(n):
                m = torch.zeros(nl.size, dtype=torch.bool)
                m[i] = True
                with neuron_masking({name: nl}, {name: m}):
                    float(loss(model(xt), yt)), float(loss(model(xc), yc))
            total += (time.perf_counter() - t) / n * nl.size * GT_IMAGES / k
    return total, exact


def fast_ground_truth_estimate(model, layers, test, triggered) -> float:
    """The same for defense/ablation.py's suffix reruns: per layer one prefix run and SAMPLE suffix runs."""
    from defense.ablation import _split
    from defense.dataflow import trace_module

    k = GT_MEASURED
    x = torch.cat([triggered.x[:k], test.x[:k]])
    gm = trace_module(model)
    nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    names = {id(m): n for n, m in model.named_modules()}
    total = 0.0
    with torch.no_grad():
        for nl in layers.values():
            t = time.perf_counter()
            prefix, suffix, live = _split(gm, nodes[names[id(nl.output)]])
            values = list(prefix(x))
            total += time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(SAMPLE):
                suffix(*values)
            total += (time.perf_counter() - t) / SAMPLE * nl.size
    return total * GT_IMAGES / k


def measure(arch: str, kwargs: dict, splits, triggered) -> dict:
    torch.manual_seed(0)
    model = models.build(arch, 10, splits.input_shape, [0.13], [0.31], **kwargs).eval()
    layers = neuron_map(model)
    row = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "neurons": sum(nl.size for nl in layers.values()),
        "layers": len(layers),
    }
    repeat = 1 if row["parameters"] > 2_000_000 else 2  # full width is slow on CPU: one measurement
    row["salience"] = timed(lambda: salience.compute("benign", model, splits.clean, layers), repeat)
    scores = salience.compute("magnitude", model, None, layers)
    mask = mark(scores, ratio=0.1)
    row["preview"] = timed(lambda: preview(model, layers, mask, splits.test, triggered), repeat)
    test_part, triggered_part = preview_sets(model, splits.input_shape, splits.test, triggered)
    row["preview images"] = len(test_part) + len(triggered_part)
    row["preview (app)"] = timed(lambda: preview(model, layers, mask, test_part, triggered_part), repeat + 1)
    run = Purification(model, splits.clean, splits.test, triggered, PurifyConfig(steps=4, eval_every=1000))
    steps = iter(run)
    next(steps)  # step 0: the evaluation before any change
    row["purify step"] = timed(lambda: next(steps), repeat + 1)
    row["ground truth"], row["exact"] = ground_truth_estimate(model, layers, splits.test, triggered)
    row["ground truth (fx)"] = fast_ground_truth_estimate(model, layers, splits.test, triggered)
    t = time.perf_counter()
    truth = ablation.ground_truth(model, layers, splits.test, triggered, max_images=None)
    row["truth (app)"] = time.perf_counter() - t
    images, sample = ablation.plan(row["neurons"])
    row["truth images"], row["truth neurons"] = images, sample or row["neurons"]
    assert truth["images"] == images
    return row


def fit(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def svg(rows: list[dict]) -> str:
    """Log-log lines of seconds against parameters, one per step."""
    w, h, pad, top = 640, 460, 60, 120  # the legend sits above the plot
    xs = [math.log10(r["parameters"]) for r in rows]
    ys = [math.log10(max(r[s], 1e-4)) for r in rows for s in STEPS]
    x0, x1, y0, y1 = min(xs), max(xs), math.floor(min(ys)), math.ceil(max(ys))

    def px(v):
        return pad + (v - x0) / (x1 - x0) * (w - 2 * pad)

    def py(v):
        return h - pad - (v - y0) / (y1 - y0) * (h - pad - top)

    colors = ("#1f77b4", "#d62728", "#e377c2", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">'
    ]
    parts.append(f'<rect width="{w}" height="{h}" fill="white"/>')
    for e in range(y0, y1 + 1):
        parts.append(f'<line x1="{pad}" x2="{w - pad}" y1="{py(e):.1f}" y2="{py(e):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{pad - 8}" y="{py(e) + 4:.1f}" text-anchor="end">1e{e} s</text>')
    for r, x in zip(rows, xs):
        parts.append(f'<text x="{px(x):.1f}" y="{h - pad + 16}" text-anchor="middle">{r["name"]}</text>')
    for s, c in zip(STEPS, colors):
        pts = " ".join(f"{px(x):.1f},{py(math.log10(max(r[s], 1e-4))):.1f}" for r, x in zip(rows, xs))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
    for i, (s, c) in enumerate(zip(STEPS, colors)):
        parts.append(f'<text x="{pad + 10}" y="{16 + 14 * i}" fill="{c}">{s}</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">model (x: log parameters)</text></svg>')
    return "\n".join(parts)


def render(rows: list[dict], note: str = "") -> str:
    SVG.write_text(svg(rows))
    lines = [
        f"Measured by `python -m bench.scaling` with {torch.get_num_threads()} torch thread(s) on this machine "
        f"({datetime.date.today().isoformat()}, {os.cpu_count()} CPU cores; the growth is what to read). "
        "Median seconds; ground truth is the full per-neuron ablation (256 + 256 images per neuron), "
        f"'est.': scaled from {SAMPLE} neuron(s) per layer on {GT_MEASURED} + {GT_MEASURED} images. "
        "Plot: bench/scaling.svg (log-log)." + (" " + note if note else ""),
        "",
        "| model | parameters | neurons | layers | salience | preview (all images) | preview (app: images) "
        "| purify step | ground truth (hooks) | ground truth (fx suffixes) | ground truth (app: images × neurons) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gt = f"{r['ground truth']:.1f}" + ("" if r["exact"] else " est.")
        lines.append(
            f"| {r['name']} | {r['parameters']:,} | {r['neurons']:,} | {r['layers']} | {r['salience']:.2f} | "
            f"{r['preview']:.2f} | {r['preview (app)']:.2f} ({r['preview images']:,}) | {r['purify step']:.3f} | "
            f"{gt} | {r['ground truth (fx)']:.1f} est. | {r['truth (app)']:.1f} ({r['truth images']} × "
            f"{r['truth neurons']:,}) |"
        )
    preact = [r for r in rows if r["name"].startswith("preact")]
    lines += ["", "Fitted growth over the PreAct widths, time ∝ parameters^k:", ""]
    for s in STEPS:
        lines.append(f"- {s}: k = {fit([r['parameters'] for r in preact], [r[s] for r in preact]):.2f}")
    return "\n".join(lines)


def main() -> None:
    import ast
    import sys

    configure_threads()
    if len(sys.argv) > 2 and sys.argv[1] == "--from-log":  # rows printed by an earlier (interrupted) run
        rows = [ast.literal_eval(line) for line in open(sys.argv[2]) if line.startswith("{")]
        note = " ".join(sys.argv[3:])
    else:
        splits = data.load_dataset("mnist5k")
        from defense.attacks import make_trigger

        triggered = metrics.triggered_set(splits.test, make_trigger("badnets", splits.input_shape), 0)
        rows, note = [], ""
        for name, arch, kwargs in CONFIGS:
            row = {"name": name, **measure(arch, kwargs, splits, triggered)}
            rows.append(row)
            print(row, flush=True)
    text = render(rows, note)
    write_section("scaling", text)
    print(text)


if __name__ == "__main__":
    main()
