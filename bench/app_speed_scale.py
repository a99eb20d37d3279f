"""The app at research scale (issue 10, item 5): a big bundled model in Chromium, `bench.app_speed --model NAME`.

Measures, on the model picked in the Model page's selectbox (the app opens on mnist-badnets, as for a user):
- ablation ground truth: from the sidebar click on "Neuron salience" until its ROC is on screen (the page polls
  the background job); a fresh server each repeat, so the truth is measured anew every time;
- Salience page render: from the sidebar click to the end of the page's script run with the per-layer overview
  drawn; the first visit (right after the model is picked) and later visits (from the Model page);
- threshold slider, one arrow-key step by share of neurons (the page's default mode), to the new marked count
  and the end of the run it starts: the first moves (each preview measured on the spot while the pruning grid
  is measured behind), and the same moves once the grid is measured (the pruning curve on screen);
- live purification: distinct progress/curve redraws per second on the Purify page, its default defense;
- the library: every registered score's compute time, `defense.salience.compute`, one torch thread.
Writes section 'app-speed-NAME' of bench/RESULTS.md.
"""

from __future__ import annotations

import copy
import datetime
import os
import re
import statistics
import time

from bench.app_speed import (
    SCRIPT_DONE,
    goto,
    idle,
    live_run,
    markdown_table,
    marked,
    open_model_page,
)
from bench.sections import write_section
from bench.server import ARGS, CHROMIUM, free_port, start_server, stop_server
from defense.paths import ROOT

SALIENCE = ("Neuron salience", "Which neurons look infected?")
THRESHOLD = ("Threshold", "Choose the purification threshold")
MODEL = ("Model", "The backdoored model")
OVERVIEW_DRAWN = "document.querySelector('[class~=\"st-key-overview\"] .js-plotly-plot') !== null"
ROC_TITLE = "finding infected neurons: ROC"  # ui.curves.roc_figure's title
CURVE_DRAWN = "your choice"  # the pruning curve's marker of the slider's value
WAIT_MS = 1_800_000  # background measurements of a big model on a loaded machine: be patient, not endless


def library_scores(model: str, repeat: int, names: list[str] | None) -> dict[str, list[float]]:
    """Seconds of ``defense.salience.compute`` per registered score, one torch thread, on a fresh copy each time."""
    import torch

    from defense import bundle, data, salience
    from defense.neurons import neuron_map
    from defense.registry import SCORES

    torch.set_num_threads(1)
    b = bundle.load_bundle(ROOT / "assets" / "models" / model)
    clean = data.load_splits_for(b.meta, None, seed=0).clean
    out = {}
    for name in names or SCORES.names():
        out[name] = []
        for _ in range(repeat):
            net = copy.deepcopy(b.model).eval()
            layers = neuron_map(net)
            t = time.perf_counter()
            salience.compute(name, net, clean, layers)
            out[name].append(time.perf_counter() - t)
        print("score", name, out[name], flush=True)
    return out


def pick_model(page, model: str) -> float:
    """Choose ``model`` in the Model page's selectbox; seconds until the page's run for it is over."""
    main = page.locator('[data-testid="stMain"]')
    t = time.perf_counter()
    main.get_by_role("combobox", name="Model").click()
    page.get_by_role("option", name=model, exact=True).click()
    page.wait_for_function(
        "(m) => document.querySelector('[data-testid=\"stSidebar\"] strong')?.innerText === m",
        arg=model,
        timeout=WAIT_MS,
    )
    idle(page, timeout=WAIT_MS)
    return time.perf_counter() - t


def salience_visit(page) -> float:
    """Seconds from the sidebar click to the Salience page's run over, its per-layer overview drawn."""
    t = time.perf_counter()
    nav = page.locator('[data-testid="stSidebarNav"]')
    nav.get_by_text(re.compile(rf"^(\d+\. )?{re.escape(SALIENCE[0])}$")).click()
    page.get_by_role("heading", name=SALIENCE[1]).wait_for(timeout=WAIT_MS)
    page.wait_for_function(f"({OVERVIEW_DRAWN}) && ({SCRIPT_DONE})", timeout=WAIT_MS)
    return time.perf_counter() - t


def truth_run(browser, model: str) -> dict:
    """A fresh server: pick ``model``, open Salience; the first render and the time until the ROC is drawn."""
    port = free_port()
    proc = start_server(port)
    try:
        page = open_model_page(browser, port)
        idle(page, timeout=WAIT_MS)
        picked = pick_model(page, model)
        t = time.perf_counter()
        first = salience_visit(page)
        page.get_by_text(ROC_TITLE).first.wait_for(timeout=WAIT_MS)
        roc = time.perf_counter() - t
        page.close()
    finally:
        stop_server(proc)
    return {"pick": picked, "first": first, "roc": roc}


def slider_step(page, key: str) -> float:
    """Seconds from an arrow key on the share slider to the new marked count on screen and that run over.

    The count, not the script state alone, says the move is drawn: the page's polling fragments run too."""
    thumb = page.locator('[data-testid="stMain"] [data-testid="stSlider"] input[type="range"]').first
    thumb.focus()
    before = marked(page)
    t = time.perf_counter()
    page.keyboard.press(key)
    page.wait_for_function(
        """(before) => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stMetric"]')]
        .some(m => m.innerText.includes('Marked neurons') && !m.innerText.includes(before))""",
        arg=before,
        timeout=WAIT_MS,
        polling=10,
    )
    idle(page, timeout=WAIT_MS)
    return time.perf_counter() - t


def slider_sweeps(page, presses: int, since: float) -> dict:
    """The Threshold page's first visit, the slider's first moves, the seconds from ``since`` until the pruning
    curve was drawn, and the same moves once it is."""
    visit = goto(page, *THRESHOLD, timeout=WAIT_MS)
    keys = ["ArrowLeft"] * presses + ["ArrowRight"] * presses
    first = [slider_step(page, k) for k in keys]
    page.locator('[data-testid="stMain"]').get_by_text(CURVE_DRAWN).first.wait_for(timeout=WAIT_MS)
    curve = time.perf_counter() - since
    return {"visit": visit, "first": first, "curve": curve, "later": [slider_step(page, k) for k in keys]}


def measure_scale(args) -> None:
    from playwright.sync_api import sync_playwright

    scores = library_scores(args.model, args.repeat, args.scores.split(",") if args.scores else None)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        truths = [truth_run(browser, args.model) for _ in range(args.repeat)]
        print("truth", truths, flush=True)
        port = free_port()
        proc = start_server(port)
        try:
            page = open_model_page(browser, port)
            idle(page, timeout=WAIT_MS)
            since = time.perf_counter()
            pick_model(page, args.model)
            slider = slider_sweeps(page, args.presses, since)
            print("slider", slider, flush=True)
            renders = []
            for _ in range(args.rounds):
                goto(page, *MODEL, timeout=WAIT_MS)
                renders.append(salience_visit(page))
            print("salience", renders, flush=True)
            live = [live_run(page, args.steps, cap_s=1800) for _ in range(args.repeat)]
            print("live", live, flush=True)
        finally:
            stop_server(proc)
        browser.close()
    md = report(args, scores, truths, slider, renders, live)
    print(md)
    if not args.no_write:
        write_section(f"app-speed-{args.model}", md)


def row(what: str, values: list[float], goal: str = "", at_most: float | None = None, at_least: float | None = None):
    """(what, n, median, min–max, goal, met) with the median against ``at_most`` / ``at_least`` where given."""
    median = statistics.median(values)
    met = median <= at_most if at_most is not None else (median >= at_least if at_least is not None else None)
    return (what, len(values), f"{median:.2f}", f"{min(values):.2f}–{max(values):.2f}", goal, met)


def report(args, scores, truths, slider, renders, live) -> str:
    from defense.registry import SCORES

    app_threads = int(os.environ.get("BNL_THREADS", 0)) or max(1, (os.cpu_count() or 1) - 1)
    rows = [
        row("Salience page, first visit right after picking the model", [t["first"] for t in truths], "≤ 3 s", 3),
        row("Salience page, later visits (from the Model page)", renders, "≤ 3 s", 3),
        row(
            "ablation ground truth: Salience page opened → its ROC on screen",
            [t["roc"] for t in truths],
            "≤ 60 s",
            60,
        ),
        row("threshold slider, one step by share, first moves (grid not measured yet)", slider["first"], "≤ 1 s", 1),
        row("threshold slider, one step by share, once the pruning grid is measured", slider["later"], "≤ 1 s", 1),
        row(
            "curve updates per second on the Purify page during a run",
            [r["updates_per_s"] for r in live],
            "≥ 1",
            at_least=1,
        ),
        row("picking the model on the Model page (its run over)", [t["pick"] for t in truths]),
        row("Threshold page, first visit (sidebar click to its run over)", [slider["visit"]]),
        row("pruning curve on screen, from picking the model", [slider["curve"]]),
        row(
            "purification: Start → its first step on screen (the page's default defense; one that marks with a slow "
            "score waits for that score's background job)",
            [r["first_step_s"] for r in live],
        ),
        row(
            f"purification, {args.steps} steps of the page's default defense, in the app", [r["seconds"] for r in live]
        ),
    ]
    rows += [row(f"library: `{name}` score ({SCORES[name].label})", v, "≤ 5 s", 5) for name, v in scores.items()]
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"""## App speed at research scale: {args.model}

`bench/app_speed.py --model {args.model}` on {datetime.date.today()}, Chromium (Playwright) against
`streamlit run app.py`, {os.cpu_count()} CPU cores, load average (1 / 5 / 15 min) {load} when it ended; torch on
{app_threads} thread(s) in the app's script and worker threads, on 1 thread for the library rows; median and min–max,
seconds unless stated. The model is picked in the Model page's selectbox after the app opens on mnist-badnets, so
the session's background queue holds that model's measurements first, as it does for a user. Salience render: from
the sidebar click to the page's script run over with the per-layer overview drawn. Slider: from the arrow key to the
new marked count on screen and that run over. Library: `defense.salience.compute(name, model, clean, layers)` on the
defender's clean subset (`data.load_splits_for(meta, None, seed=0)`), a fresh copy of the model each time.

{markdown_table(rows)}
"""
