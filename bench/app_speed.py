"""Speed of the Streamlit app as a user meets it, in Chromium (Playwright) against `streamlit run app.py`.

Measures
- first page: from starting `streamlit run` to the Model page complete (attribution drawn), fresh server each time;
- page switch: from a click in the sidebar to the new page complete (its script run over), caches warm;
- threshold slider: from an arrow key on the slider to the new marked count and preview on screen, by share
  of neurons and by score cut (each grid of values is measured once in the background; until then, each move);
- live purification: curve updates per second seen in the browser while a run trains, and the training
  slowdown against the same purification run alone in a plain process with the app's thread setting.
Appends its figures to bench/RESULTS.md (section 'app-speed', after the marker the main bench writer keeps).
With `--model NAME` (another bundled model, e.g. the 1,200-neuron mnist-preact-badnets) it measures the
research-scale set instead (bench/app_speed_scale.py; section 'app-speed-NAME').
Run from the repository root: .venv/bin/python -m bench.app_speed [--repeat N] [--model NAME]
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import time

from bench.sections import write_section
from bench.server import ARGS, CHROMIUM, free_port, start_server, stop_server
from defense.paths import ROOT

DEFAULT_MODEL = "mnist-badnets"  # the app opens on it; another --model runs bench/app_speed_scale.py's set
PAGES = [
    ("Neuron salience", "Which neurons look infected?"),
    ("Threshold", "Choose the purification threshold"),
    ("Purify", "Purify the model"),
    ("Model", "The backdoored model"),
]
STEPS = 300  # the default purification length


SCRIPT_DONE = (
    "document.querySelector('[data-testid=\"stApp\"]')?.getAttribute('data-test-script-state') === 'notRunning'"
)


def idle(page, timeout: float = 60_000) -> None:
    """Wait until the app's script run is over."""
    page.wait_for_function(SCRIPT_DONE, timeout=timeout)


def marked(page) -> str:
    return (
        page.locator('[data-testid="stMain"] [data-testid="stMetric"]')
        .filter(has_text="Marked neurons")
        .locator('[data-testid="stMetricValue"]')
        .inner_text()
    )


def open_model_page(browser, port: int):
    """A new tab on the app's first page (Model), once its heading is drawn."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"http://127.0.0.1:{port}/")
    page.get_by_role("heading", name="Where the model looks").wait_for(timeout=120_000)
    return page


def first_page(browser, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        port = free_port()
        started = time.perf_counter()
        proc = start_server(port)
        try:
            page = open_model_page(browser, port)
            page.wait_for_function(
                "document.querySelectorAll('[data-testid=\"stMain\"] .js-plotly-plot').length >= 2", timeout=60_000
            )
            times.append(time.perf_counter() - started)
            page.close()
        finally:
            stop_server(proc)
    return times


def goto(page, link: str, heading: str, timeout: float = 60_000) -> float:
    """Seconds from a click in the sidebar to the new page's heading drawn and its script run over."""
    t = time.perf_counter()
    nav = page.locator('[data-testid="stSidebarNav"]')  # the lesson's steps are numbered: "2. Neuron salience"
    nav.get_by_text(re.compile(rf"^(\d+\. )?{re.escape(link)}$")).click()
    page.get_by_role("heading", name=heading).wait_for(timeout=timeout)
    idle(page, timeout)
    return time.perf_counter() - t


def page_switches(page, rounds: int) -> list[float]:
    for link, heading in PAGES:  # warm every cache first (the ground truth and pruning curves included)
        goto(page, link, heading)
    goto(page, "Neuron salience", "Which neurons look infected?")
    page.get_by_text("finding infected neurons: ROC").wait_for(timeout=180_000)
    goto(page, "Threshold", "Choose the purification threshold")
    page.get_by_text("your choice").wait_for(timeout=180_000)
    return [goto(page, link, heading) for _ in range(rounds) for link, heading in PAGES]


WATCH_RUN = """() => { const app = document.querySelector('[data-testid="stApp"]');
    window.__ran = false; window.__done = false;
    if (!window.__watching) { window.__watching = true;
        new MutationObserver(() => { const s = app.getAttribute('data-test-script-state');
            if (s === 'running') window.__ran = true; else if (window.__ran) window.__done = true; })
        .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']}); } }"""


def slider_sweep(page, keys: list[str]) -> list[float]:
    """Seconds from each arrow key on the slider to the end of the script run it starts (preview on screen)."""
    thumb = page.locator('[data-testid="stMain"] [data-testid="stSlider"] input[type="range"]').first
    out = []
    for key in keys:
        thumb.focus()
        page.evaluate(WATCH_RUN)
        t = time.perf_counter()
        page.keyboard.press(key)
        page.wait_for_function("window.__done === true", timeout=30_000, polling=10)
        out.append(time.perf_counter() - t)
    return out


def slider_moves(page, presses: int) -> tuple[list[float], list[float], list[float]]:
    """Share of neurons (read from the pruning curves), then score cut: first moves, and moves 20 s later."""
    goto(page, "Threshold", "Choose the purification threshold")
    shares = slider_sweep(page, ["ArrowLeft"] * presses + ["ArrowRight"] * presses)
    page.locator('[data-testid="stMain"] [data-testid="stRadio"]').filter(has_text="Mark by").get_by_text(
        "score cut"
    ).click()
    page.get_by_text("Mark neurons with normalized importance up to").wait_for(timeout=30_000)
    idle(page)
    cuts = slider_sweep(page, ["ArrowLeft"] * presses)  # at once: measured live while the grid is measured behind
    page.wait_for_timeout(20_000)
    cuts_later = slider_sweep(page, ["ArrowLeft"] * presses)  # new values, read from the measured grid
    return shares, cuts, cuts_later


PROGRESS = re.compile(r"\d+\. [^:\s]+: step \d+ of \d+")  # "1. clp-ar: step 12 of 300 (settings)", any defense


def live_run(page, steps: int, cap_s: float = 300) -> dict:
    """Start the page's default defense; count how often the progress and curves change on screen (for at most
    ``cap_s`` seconds, then wait for the run's end)."""
    goto(page, "Purify", "Purify the model", timeout=max(60_000, 1000 * cap_s))
    box = page.locator('[data-testid="stMain"]').get_by_role("spinbutton", name="Steps")
    box.fill(str(steps))
    box.press("Enter")
    page.wait_for_timeout(800)
    idle(page)
    page.locator('[data-testid="stMain"]').get_by_role("button", name="Start purification").click()
    clicked = time.perf_counter()
    progress = page.locator('[data-testid="stMain"]').get_by_text(PROGRESS)
    # a defense that marks with a slow score (nc-ar: the trigger reversal) waits for its background job first
    progress.first.wait_for(timeout=max(60_000, 1000 * cap_s))
    seen, changes, t0 = None, [], time.perf_counter()
    while True:
        try:
            text = progress.first.inner_text(timeout=2_000)
        except Exception:  # noqa: BLE001 - the progress bar is gone: the run is over
            break
        if text != seen:
            seen = text
            changes.append(time.perf_counter())
        page.wait_for_timeout(100)
        if time.perf_counter() - t0 > cap_s:
            break
    runs_done = page.locator('[data-testid="stMain"]').get_by_role("combobox", name="Run")
    runs_done.wait_for(timeout=max(60_000, 1000 * cap_s))
    seconds = float(
        page.locator('[data-testid="stMain"] [data-testid="stMetric"]')
        .filter(has_text="Time for")
        .locator('[data-testid="stMetricValue"]')
        .inner_text()
        .rstrip(" s")
    )
    span = changes[-1] - changes[0] if len(changes) > 1 else float("nan")
    return {
        "updates_per_s": (len(changes) - 1) / span if span > 0 else float("nan"),
        "seconds": seconds,
        "first_step_s": t0 - clicked,
    }


ALONE = """
import sys, threading
from dataclasses import replace
from defense import baselines, bundle, data, metrics, purify
from defense.runtime import configure_threads
b = bundle.load_bundle({root!r} + "/assets/models/" + {model!r})
s = data.load_splits_for(b.meta, None, seed=0)
trig = metrics.triggered_set(s.test, b.trigger, b.target)
cfg = replace(purify.PurifyConfig(), steps={steps}, eval_every=10)  # the Purify page's defaults
out = []

def work():  # in a worker thread with the app's thread setting, as the app runs it
    configure_threads(share_with_server=True)
    run = baselines.make(baselines.recommended().name, b.model, s.clean, s.test, trig, cfg)
    for _ in run:
        pass
    out.append(run.history[-1]["seconds"])

t = threading.Thread(target=work)
t.start()
t.join()
print(out[0])
"""


def alone(steps: int, model: str = DEFAULT_MODEL) -> float:
    """The same purification (the page's default defense and settings) in a worker thread of a plain process:
    no server, no browser."""
    out = subprocess.run(
        [sys.executable, "-c", ALONE.format(root=str(ROOT), model=model, steps=steps)],
        cwd=ROOT,  # `python -c` imports from the working directory
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return float(out.stdout.strip().splitlines()[-1])


def fmt(values: list[float]) -> tuple[str, str]:
    return f"{statistics.median(values):.2f}", f"{min(values):.2f}–{max(values):.2f}"


def markdown_table(rows: list[tuple]) -> str:
    """Rows of (what, n, median, min–max, goal, met: bool or None for no goal) as a markdown table."""
    lines = ["| what | n | median | min–max | goal |", "|---|---|---|---|---|"]
    lines += [
        f"| {w} | {n} | {m} | {r} | {g}{'' if ok is None else (' ✓' if ok else ' ✗')} |" for w, n, m, r, g, ok in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh servers for the first page, and purification runs")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a bundled model; other than {DEFAULT_MODEL}, the research-scale set (bench/app_speed_scale.py)",
    )
    parser.add_argument("--steps", type=int, default=STEPS, help="purification steps of each live run")
    parser.add_argument("--presses", type=int, default=5, help="arrow-key presses per slider sweep")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of page switches (Salience visits)")
    parser.add_argument("--scores", default="", help="with --model: time only these scores (comma-separated)")
    args = parser.parse_args()
    if args.model != DEFAULT_MODEL:
        from bench.app_speed_scale import measure_scale

        measure_scale(args)
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        first = first_page(browser, args.repeat)
        print("first page", first, flush=True)
        port = free_port()
        proc = start_server(port)
        try:
            page = open_model_page(browser, port)
            switches = page_switches(page, rounds=args.rounds)
            print("switches", switches, flush=True)
            shares, cuts, cuts_later = slider_moves(page, presses=args.presses)
            print("slider", shares, cuts, cuts_later, flush=True)
            live = [live_run(page, args.steps) for _ in range(args.repeat)]
            print("live", live, flush=True)
        finally:
            stop_server(proc)
        browser.close()
    plain = [alone(args.steps) for _ in range(args.repeat)]
    print("alone", plain, flush=True)

    in_app = statistics.median(r["seconds"] for r in live)
    slowdown = in_app / statistics.median(plain) - 1
    rate = [r["updates_per_s"] for r in live]
    rows = [
        (
            "first page after `streamlit run` starts (fresh server)",
            len(first),
            *fmt(first),
            "≤ 8 s",
            statistics.median(first) <= 8,
        ),
        (
            "page switch by the sidebar (caches warm)",
            len(switches),
            *fmt(switches),
            "≤ 1.5 s",
            statistics.median(switches) <= 1.5,
        ),
        (
            "threshold slider, one step, by share of neurons",
            len(shares),
            *fmt(shares),
            "≤ 0.5 s",
            statistics.median(shares) <= 0.5,
        ),
        (
            "threshold slider, one step, by score cut, first moves after choosing it",
            len(cuts),
            *fmt(cuts),
            "≤ 0.5 s",
            statistics.median(cuts) <= 0.5,
        ),
        (
            "threshold slider, one step, by score cut, 20 s later",
            len(cuts_later),
            *fmt(cuts_later),
            "≤ 0.5 s",
            statistics.median(cuts_later) <= 0.5,
        ),
        (
            "curve updates per second on screen during a run",
            len(rate),
            *(f"{v:.2f}" for v in (statistics.median(rate),)),
            f"{min(rate):.2f}–{max(rate):.2f}",
            "≥ 2",
            statistics.median(rate) >= 2,
        ),
        (f"purification {args.steps} steps, in the app (s)", len(live), *fmt([r["seconds"] for r in live]), "", None),
        ("same purification alone, no server (s)", len(plain), *fmt(plain), "", None),
        ("training slowdown in the app", 1, f"{slowdown:+.0%}", "", "≤ 10%", slowdown <= 0.10),
    ]
    cores = os.cpu_count()
    load = os.getloadavg()[0]
    md = f"""## App speed

`bench/app_speed.py` on {datetime.date.today()}, Chromium (Playwright) against `streamlit run app.py`, {cores} CPU cores
(load average {load:.1f} when it ended: the machine is shared), torch on one thread in the app (the other core is left
to the server); median and min–max, seconds unless stated. Curve updates: distinct progress/curve redraws seen in
the page, which polls its run every 0.4 s (loss every step, accuracy and ASR every 10 steps).

{markdown_table(rows)}
"""
    print(md)
    if not args.no_write:
        write_section("app-speed", md)


if __name__ == "__main__":
    main()
