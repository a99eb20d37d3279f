"""The app under load, in Chromium (Playwright) against `streamlit run app.py` (issue 14).

Measures
- load: 8 sessions (browser contexts) start a purification at the same moment; completion of each, and
  the wall time until all are done;
- soak: 50 times, a new session uploads a bundle (.zip, the four bundled models under 50 different
  names, so every upload is a new cache key), waits until it is the current model, and closes;
- memory: the RSS of the streamlit process (/proc/PID/status), sampled every 0.25 s: idle right after
  start, idle once one session has opened the default model and closed ("warm idle": torch, data and
  caches loaded), peak during load and soak, and after every session has closed and the server has
  had time to drop them (goal: within 10% of the warm idle server);
- shutdown: seconds from SIGTERM to exit while a session's long background job runs (an upload of a
  small_cnn with 3,000 hidden units, whose ablation ground truth takes minutes).
Writes section 'app-load' of bench/RESULTS.md. Run from the repository root:
  nice .venv/bin/python -m bench.app_load [--sessions 8] [--soak 50] [--steps 100]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from bench.sections import write_section
from bench.server import ALLOCATOR_ENV, ARGS, CHROMIUM, free_port, start_server
from defense.paths import ROOT

MODELS = ROOT / "assets" / "models"
BUNDLED = ["mnist-badnets", "mnist-blend", "mnist-sig", "mnist-wanet"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler(threading.Thread):
    """Peak RSS of ``pid`` since the last ``reset``."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self) -> None:
        while self.running:
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except OSError:
                return
            time.sleep(0.25)

    def reset(self) -> float:
        peak, self.peak = self.peak, 0.0
        return peak


def bundle_zip(name: str, renamed: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in (MODELS / name).iterdir():
            blob = f.read_bytes()
            if f.name == "meta.json" and renamed:
                blob = json.dumps({**json.loads(blob), "name": renamed}).encode()
            z.writestr(f.name, blob)
    return buf.getvalue()


def big_bundle_zip(path: Path, hidden: int = 3000) -> Path:
    """A legitimate small_cnn bundle with ``hidden`` units (random weights): its ablation takes minutes."""
    import torch

    from defense import bundle as bundle_io

    base = bundle_io.load_bundle(MODELS / "mnist-badnets")
    meta = {**base.meta, "name": f"wide-{hidden}", "arch_kwargs": {"hidden": hidden}}
    torch.manual_seed(0)
    model = bundle_io.build_model(meta).eval()
    return bundle_io.save_bundle(bundle_io.Bundle(model, meta, base.trigger), path)


def open_session(browser, url: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.get_by_role("heading", name="Where the model looks").wait_for(timeout=300_000)
    return context, page


def current_model(page) -> str:
    return page.locator('[data-testid="stSidebar"] strong').first.inner_text()


def upload(page, path: Path, name: str, timeout_ms: int = 300_000) -> None:
    from playwright.sync_api import expect

    main = page.locator('[data-testid="stMain"]')
    model_file = main.locator('input[type="file"][accept*=".safetensors"]')  # not the clean-images uploader
    if not model_file.locator("xpath=ancestor::*[@data-testid='stFileUploader']").is_visible():
        main.get_by_text("Upload your own model").click()
    model_file.set_input_files(str(path))
    main.get_by_text(path.name).wait_for(timeout=60_000)
    main.get_by_role("button", name="Load this model").click()
    expect(page.locator('[data-testid="stSidebar"] strong').first).to_have_text(name, timeout=timeout_ms)


def purify_all(browser, url: str, sessions: int, steps: int, model: str | None = None) -> dict:
    from playwright.sync_api import expect

    from bench.app_speed_scale import pick_model

    opened = []
    for _ in range(sessions):
        context, page = open_session(browser, url)
        if model:  # each session picks it in the Model page's selectbox, as a user would
            pick_model(page, model)
        main = page.locator('[data-testid="stMain"]')
        nav = page.locator('[data-testid="stSidebarNav"]')  # the lesson's steps are numbered: "4. Purify"
        nav.get_by_text(re.compile(r"^(\d+\. )?Purify$")).click()
        main.get_by_text(re.compile(r"Marked by .*neurons")).wait_for(timeout=300_000)
        box = main.get_by_role("spinbutton", name="Steps")
        box.fill(str(steps))
        box.press("Enter")
        expect(box).to_have_value(str(steps))
        main.get_by_text("No run yet").wait_for(timeout=60_000)
        opened.append((context, page, main))
    start = time.monotonic()
    for _, _, main in opened:
        main.get_by_role("button", name="Start purification").click()
    done, seconds, other = 0, [], []
    for _, _, main in opened:
        box = main.get_by_role("combobox", name="Run")
        failed = main.get_by_text(re.compile(r"1\. [\w-]+ failed"))  # the page's default defense
        try:
            failed.or_(box).first.wait_for(timeout=900_000)
            if failed.count():
                other.append(failed.first.inner_text()[:200])
                continue
            expect(box).to_have_value(re.compile(r"^1\. [\w-]+ \((done|stopped|abandoned)\)$"), timeout=900_000)
        except Exception:  # noqa: BLE001 - counted as not done
            other.append("timed out")
            continue
        if box.input_value().endswith(" (done)"):
            done += 1
            seconds.append(time.monotonic() - start)
        else:
            other.append(box.input_value())
    for context, _, _ in opened:
        context.close()
    if other:
        print("runs not done:", other, file=sys.stderr)
    return {"done": done, "all_done_s": max(seconds) if seconds else float("nan"), "not_done": other}


def soak(browser, url: str, rounds: int, folder: Path) -> dict:
    ok, times = 0, []
    for i in range(rounds):
        name = f"soak-{i:02d}-{BUNDLED[i % len(BUNDLED)]}"
        path = folder / f"s{i:02d}.zip"  # short: the uploader elides long file names
        path.write_bytes(bundle_zip(BUNDLED[i % len(BUNDLED)], name))
        start = time.monotonic()
        context, page = open_session(browser, url)
        try:
            upload(page, path, name)
            ok += 1
            times.append(time.monotonic() - start)
        except Exception as err:  # noqa: BLE001 - counted, and the soak goes on
            print(f"soak {i}: {type(err).__name__}: {str(err)[:200]}", file=sys.stderr)
        context.close()
    return {"ok": ok, "mean_s": sum(times) / max(len(times), 1)}


def settle(pid: int, seconds: float) -> float:
    """RSS after waiting for closed sessions to be dropped and their jobs to stop."""
    time.sleep(seconds)
    return rss_mib(pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--soak", type=int, default=50)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--settle",
        type=float,
        default=75,
        help="seconds to wait after the last session closes (Streamlit drops it after 30 s, trims run every 30 s)",
    )
    parser.add_argument(
        "--model",
        help="a bundled model every load session picks (default: the one the app opens on); "
        "writes section 'app-load-MODEL' and skips the soak and the SIGTERM check",
    )
    args = parser.parse_args()
    if args.model:
        args.soak = 0
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="bnl-load-"))
    log_path = folder / "server.log"
    figures: dict = {}
    with open(log_path, "w") as log, sync_playwright() as p:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(port, log, timeout=90, poll_s=0.3)
        sampler = Sampler(proc.pid)
        sampler.start()
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            time.sleep(2)
            figures["idle_fresh"] = rss_mib(proc.pid)
            context, _ = open_session(browser, url)
            time.sleep(20)  # its background measurements (ground truth, curves) run meanwhile
            context.close()
            figures["idle_warm"] = settle(proc.pid, args.settle)
            sampler.reset()
            figures["load"] = purify_all(browser, url, args.sessions, args.steps, args.model)
            figures["load_peak"] = sampler.reset()
            figures["after_load"] = settle(proc.pid, args.settle)
            if not args.model:  # the soak and the SIGTERM check are the default model's
                sampler.reset()
                figures["soak"] = soak(browser, url, args.soak, folder)
                figures["soak_peak"] = sampler.reset()
                figures["after_all"] = settle(proc.pid, args.settle)
                big = big_bundle_zip(folder / "wide-3000.zip")
                context, page = open_session(browser, url)
                upload(page, big, "wide-3000")
                time.sleep(5)  # its ground truth runs now (minutes of ablation)
                sent = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=120)
                    figures["sigterm_s"] = time.monotonic() - sent
                except subprocess.TimeoutExpired:
                    figures["sigterm_s"] = float("inf")
                context.close()
        finally:
            sampler.running = False
            browser.close()
            if proc.poll() is None:
                proc.kill()
    print(json.dumps(figures, indent=2))
    if args.model:
        write_section(f"app-load-{args.model}", model_report(figures, args))
    else:
        write_section("app-load", report(figures, args))
    tracebacks = log_path.read_text().count("Traceback")
    if tracebacks:
        print(f"server log {log_path} holds {tracebacks} traceback(s)", file=sys.stderr)


def model_report(f: dict, args) -> str:
    return "\n".join(
        [
            f"## App under load on {args.model} (bench/app_load.py --model)",
            "",
            f"Measured {datetime.date.today().isoformat()} on {os.cpu_count()} CPU cores, Chromium via Playwright "
            "against one `streamlit run app.py`; each session picks the model in the Model page and starts the "
            "Purify page's default defense at the same moment; memory is the streamlit process's RSS from /proc.",
            "",
            "| what | figure |",
            "|---|---|",
            f"| {args.sessions} sessions purifying at once ({args.steps} steps each) | "
            f"{f['load']['done']}/{args.sessions} done, all within {f['load']['all_done_s']:.0f} s |",
            f"| RSS idle, warm (one session opened the default model and closed) | {f['idle_warm']:.0f} MiB |",
            f"| RSS peak while the {args.sessions} sessions opened the model and purified | {f['load_peak']:.0f} MiB |",
            f"| RSS {args.settle:.0f} s after they closed | {f['after_load']:.0f} MiB "
            f"({f['after_load'] / f['idle_warm'] - 1:+.0%} of warm idle) |",
        ]
    )


def report(f: dict, args) -> str:
    goal = f["idle_warm"] * 1.10
    verdict = "met" if f["after_all"] <= goal else "missed"
    cores = os.cpu_count()
    return "\n".join(
        [
            "## App under load (bench/app_load.py)",
            "",
            f"Measured {datetime.date.today().isoformat()} on {cores} CPU cores shared with other work "
            "(`nice`, numbers are noisy), Chromium via Playwright against one `streamlit run app.py` "
            f"started with MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', ALLOCATOR_ENV['MALLOC_ARENA_MAX'])} "
            "(as `make run` does); "
            "memory is the streamlit process's RSS from /proc.",
            "",
            "| what | figure |",
            "|---|---|",
            f"| {args.sessions} sessions purifying at once ({args.steps} steps each) | "
            f"{f['load']['done']}/{args.sessions} done, all within {f['load']['all_done_s']:.0f} s |",
            f"| soak: {args.soak} sessions each uploading a bundle, then closing | "
            f"{f['soak']['ok']}/{args.soak} loaded (mean {f['soak']['mean_s']:.1f} s from open to loaded) |",
            f"| RSS idle, fresh server | {f['idle_fresh']:.0f} MiB |",
            f"| RSS idle, warm (one session opened the default model and closed) | {f['idle_warm']:.0f} MiB |",
            f"| RSS peak during the {args.sessions} purifications | {f['load_peak']:.0f} MiB |",
            f"| RSS {args.settle:.0f} s after they closed | {f['after_load']:.0f} MiB |",
            f"| RSS peak during the soak | {f['soak_peak']:.0f} MiB |",
            f"| RSS {args.settle:.0f} s after every session closed | {f['after_all']:.0f} MiB "
            f"({f['after_all'] / f['idle_warm'] - 1:+.0%} of warm idle; goal ≤ +10%: {verdict}) |",
            f"| SIGTERM to exit, with a 3,000-unit model's ablation running | {f['sigterm_s']:.1f} s (goal ≤ 5 s) |",
        ]
    )


if __name__ == "__main__":
    main()
