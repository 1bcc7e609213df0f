"""Memory of the dashboard's server over many page views, one after another.

Serves the dashboard with ``python -m hessviz.serve`` on a free localhost port; opens it N times in
headless Chromium (Debian's ``/usr/bin/chromium``), each time with its own browser context: wait for
the Hessian heatmap, close the page, wait for Voila to pre-heat the next kernel. After each view it
records the server's RSS and how many kernels it has (1 means only the pre-heated one: the closed
page's kernel was shut down). Writes a table to ``benchmarks/results/page_views.md``.

Run:  .venv/bin/python benchmarks/page_views.py [--views 40] [--settle 12]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import psutil
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without relying on how hessviz was installed

from hessviz.serve import free_port  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "page_views.md"
CHROMIUM = "/usr/bin/chromium"


def wait_until_serving(url: str, server: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}voila/static/voila.js", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"the server did not start (exit code {server.poll()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=40)
    parser.add_argument("--settle", type=float, default=12, help="seconds after each close")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    tmp = tempfile.mkdtemp(prefix="hessviz-views-")
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": f"{tmp}/runtime", "JUPYTER_DATA_DIR": f"{tmp}/data"}
    server = subprocess.Popen(
        [sys.executable, "-m", "hessviz.serve", f"--port={port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # stopped below by its process group id, never by name
    )
    rows = []
    try:
        wait_until_serving(url, server)
        process = psutil.Process(server.pid)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            for view in range(1, args.views + 1):
                context = browser.new_context()
                page = context.new_page()
                page.goto(f"{url}?act=sigmoid&seed={view}")
                page.wait_for_selector(".hv-fig-hessian .js-plotly-plot", timeout=120_000)
                page.close(run_before_unload=True)  # what closing the tab does
                context.close()
                time.sleep(args.settle)
                kernels = len(process.children())
                rows.append((view, process.memory_info().rss / 2**20, kernels))
                print(f"view {view:3d}: server RSS {rows[-1][1]:6.1f} MB, kernels {kernels}")
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Dashboard server memory over page views",
        "",
        f"Measured by `benchmarks/page_views.py` on {stamp}: {os.cpu_count()} CPUs. Each view "
        f"opens the dashboard in a fresh browser context, waits for the Hessian heatmap, closes "
        f"the page and waits {args.settle:g} s. Kernels: the server's kernel processes after "
        "that (1 = only the pre-heated kernel for the next visitor).",
        "",
        "| view | server RSS (MB) | kernels |",
        "|---:|---:|---:|",
        *(f"| {v} | {rss:.1f} | {k} |" for v, rss, k in rows),
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
