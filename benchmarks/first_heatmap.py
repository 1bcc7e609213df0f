"""Seconds from opening the dashboard to its first heatmap: warm, cold and as Binder serves it.

- ``warm``: ``python -m hessviz.serve`` (what ``./dev dashboard`` runs), whose pre-heated kernel has
  started Python and torch before the visitor comes;
- ``cold``: plain ``voila notebooks/dashboard.ipynb`` without a pre-heated kernel (what most Voila
  users run): each page starts its kernel;
- ``binder``: a Jupyter server configured as ``binder/postBuild`` leaves it (Voila as a server
  extension, hessviz's template and extension), no pre-heated kernel either.

Each view is a fresh browser context in headless Chromium (Debian's ``/usr/bin/chromium``) with
every non-local request blocked; it waits until the server and its kernels are idle first, then
times page open → the Hessian panel holds a heatmap. The load average before each view is printed
with it: these machines are shared, and a busy CPU stretches every number.

Run:  .venv/bin/python benchmarks/first_heatmap.py [warm|cold|binder ...] [--views 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hessviz.serve import free_port  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",  # fmt: skip
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage"]  # fmt: skip
QUERY = "n=2&m=2&layers=8,8&act=tanh&seed=0&x=0.3,-1"
HEATMAP = """() => { const d = document.querySelector('.hv-fig-hessian .js-plotly-plot');
    return d && d.data && d.data.length && d.data[0].z && d.data[0].z.length > 0; }"""


def server(mode: str, port: int, tmp: Path) -> tuple[list[str], dict, str, str]:
    """``(command, environment, readiness path, page path)`` for ``mode``."""
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": f"{tmp}/runtime", "JUPYTER_DATA_DIR": f"{tmp}/data"}
    if mode == "warm":
        return (
            [sys.executable, "-m", "hessviz.serve", f"--port={port}"],
            env,
            "voila/static/voila.js",
            "?",
        )
    if mode == "cold":
        command = [sys.executable, "-m", "voila", "notebooks/dashboard.ipynb", "--no-browser",
                   f"--port={port}", "--VoilaConfiguration.preheat_kernel=False"]  # fmt: skip
        return command, env, "voila/static/voila.js", "?"
    config = tmp / "etc"  # binder: the configuration as postBuild installs it
    config.mkdir()
    shutil.copy(ROOT / "binder" / "jupyter_server_config.json", config)
    env |= {"JUPYTER_CONFIG_PATH": str(config), "JUPYTER_PATH": str(ROOT / "share" / "jupyter")}
    command = [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
               "--IdentityProvider.token=t", f"--port={port}"]  # fmt: skip
    return command, env, "api/status?token=t", "voila/render/notebooks/dashboard.ipynb?token=t&"


def wait_until_idle(pid: int, need_kernel: bool, seconds: float = 120) -> None:
    """Until the server and its kernels use < 10 % CPU (and, warm, the pre-heated kernel exists)."""
    root = psutil.Process(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        family = [root, *root.children(recursive=True)]
        for process in family:
            try:
                process.cpu_percent(None)
            except psutil.Error:
                pass
        time.sleep(0.5)
        busy = 0.0
        for process in family:
            try:
                busy += process.cpu_percent(None)
            except psutil.Error:
                pass
        if busy < 10 and (len(family) > 1 or not need_kernel):
            return


def measure(mode: str, views: int) -> list[float]:
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="hessviz-first-"))
    command, env, ready, page = server(mode, port, tmp)
    url = f"http://127.0.0.1:{port}/"
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    times = []
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + ready, timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            for view in range(views):
                wait_until_idle(process.pid, need_kernel=mode == "warm")
                load = os.getloadavg()[0]
                context = browser.new_context(viewport={"width": 1366, "height": 768})
                tab = context.new_page()
                tab.route(
                    "**/*", lambda r: r.continue_() if "127.0.0.1" in r.request.url else r.abort()
                )
                start = time.perf_counter()
                tab.goto(url + page + QUERY, wait_until="commit")
                tab.wait_for_function(HEATMAP, timeout=180_000, polling=50)
                times.append(time.perf_counter() - start)
                cpus = os.cpu_count()
                print(f"{mode:6} view {view + 1}: page open -> first heatmap {times[-1]:5.2f} s "
                      f"(load average {load:.1f} on {cpus} CPUs)", flush=True)  # fmt: skip
                tab.close(run_before_unload=True)
                context.close()
            browser.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # its own process group, by pid
        process.wait(timeout=30)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "modes", nargs="*", default=["warm", "cold"], choices=["warm", "cold", "binder"]
    )
    parser.add_argument("--views", type=int, default=3)
    args = parser.parse_args()
    for mode in args.modes:
        times = sorted(measure(mode, args.views))
        print(
            f"{mode}: median {times[len(times) // 2]:.2f} s, range {times[0]:.2f}-{times[-1]:.2f} s"
        )


if __name__ == "__main__":
    main()
