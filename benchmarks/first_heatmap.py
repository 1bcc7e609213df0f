"""Seconds from opening the dashboard to its first heatmap: warm, cold and as Binder serves it.

- ``warm``: ``python -m hessviz.serve`` (what ``./dev dashboard`` runs), whose pre-heated kernel has
  started Python and torch before the visitor comes;
- ``cold``: plain ``voila notebooks/dashboard.ipynb`` without a pre-heated kernel (what most Voila
  users run): each page starts its kernel;
- ``binder``: a Jupyter server configured as ``binder/postBuild`` leaves it (Voila as a server
  extension, hessviz's template and extension), no pre-heated kernel either.

Each view is a fresh browser context in headless Chromium (Debian's ``/usr/bin/chromium``) with
every non-local request blocked; it waits until the server and its kernels are idle first, then
times page open → the Hessian panel holds a heatmap, and → all seven panels are drawn (the lower
panels join the page after the first heatmap), with the widget views on the page at each point.
The load average before each view is printed with it: these machines are shared, and a busy CPU
stretches every number.

With ``--against PATH`` (another checkout, e.g. ``git worktree add /tmp/before HEAD~1``) the
views take turns between the two, one server each, so that both see the same load: on a shared
machine that is the comparison to trust.

Run:  .venv/bin/python benchmarks/first_heatmap.py [warm|cold|binder ...] [--views 3]
          [--against PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
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
#: The Hessian panel holds a heatmap; then the number of widget views on the page (each
#: ipywidgets view's element has the class ``jupyter-widgets``), else ``false``.
HEATMAP = """() => { const d = document.querySelector('.hv-fig-hessian .js-plotly-plot');
    return !!(d && d.data && d.data.length && d.data[0].z && d.data[0].z.length > 0)
        && document.querySelectorAll('.jupyter-widgets').length; }"""
#: Every panel drawn: the page is complete (its lower panels come after the first heatmap).
ALL_DRAWN = """() => { const p = document.querySelectorAll('[class*="hv-fig-"] .js-plotly-plot');
    return p.length >= 7 && Array.from(p).every((d) => d.data && d.data.length > 0)
        && document.querySelectorAll('.jupyter-widgets').length; }"""


def server(mode: str, port: int, tmp: Path, root: Path = ROOT) -> tuple[list[str], dict, str, str]:
    """``(command, environment, readiness path, page path)`` for ``mode``, serving the checkout
    ``root`` (its kernels import that checkout's hessviz)."""
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": f"{tmp}/runtime", "JUPYTER_DATA_DIR": f"{tmp}/data",
           "PYTHONPATH": str(root)}  # fmt: skip
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
    shutil.copy(root / "binder" / "jupyter_server_config.json", config)
    env |= {"JUPYTER_CONFIG_PATH": str(config), "JUPYTER_PATH": str(root / "share" / "jupyter")}
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


def measure(mode: str, views: int, roots: list[Path]) -> dict[Path, list[tuple[float, ...]]]:
    """Checkout → ``(first heatmap s, all panels s, load average)`` for each of its views.

    One server per checkout; views take turns between them, so a change in the machine's load
    hits each alike."""
    servers, logs, tmps = {}, [], []
    times: dict[Path, list[tuple[float, ...]]] = {root: [] for root in roots}
    try:
        for root in roots:
            port = free_port()
            tmp = Path(tempfile.mkdtemp(prefix="hessviz-first-"))
            tmps.append(tmp)
            command, env, ready, page = server(mode, port, tmp, root)
            logs.append(open(tmp / "server.log", "w"))  # noqa: SIM115 - closed below
            process = subprocess.Popen(
                command, cwd=root, env=env, stdout=logs[-1], stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            url = f"http://127.0.0.1:{port}/"
            servers[root] = (process, url + page + QUERY)
            for _ in range(600):
                try:
                    with urllib.request.urlopen(url + ready, timeout=2):
                        break
                except OSError:
                    time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            for view in range(views):
                for root in roots if view % 2 == 0 else roots[::-1]:
                    process, url = servers[root]
                    for other, _ in servers.values():
                        wait_until_idle(other.pid, need_kernel=mode == "warm")
                    times[root].append(view_once(browser, url, mode))
                    first, complete, load, views_first, views_all = times[root][-1]
                    name = f" {root}" if len(roots) > 1 else ""
                    print(f"{mode:6}{name} view {view + 1}: page open -> first heatmap "
                          f"{first:5.2f} s ({views_first} widget views), all panels "
                          f"{complete:5.2f} s ({views_all}) (load average {load:.1f} on "
                          f"{os.cpu_count()} CPUs)", flush=True)  # fmt: skip
            browser.close()
    finally:
        for process, _ in servers.values():
            os.killpg(process.pid, signal.SIGTERM)  # its own process group, by pid
            process.wait(timeout=30)
        for log in logs:
            log.close()
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)
    return times


def view_once(browser, url: str, mode: str) -> tuple[float, float, float, int, int]:
    """One page view in a fresh context: ``(first heatmap s, all panels s, load average, widget
    views then, widget views at the end)``."""
    load = os.getloadavg()[0]
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    tab = context.new_page()
    tab.route("**/*", lambda r: r.continue_() if "127.0.0.1" in r.request.url else r.abort())
    start = time.perf_counter()
    tab.goto(url, wait_until="commit")
    views_first = tab.wait_for_function(HEATMAP, timeout=180_000, polling=50).json_value()
    first = time.perf_counter() - start
    views_all = tab.wait_for_function(ALL_DRAWN, timeout=180_000, polling=50).json_value()
    complete = time.perf_counter() - start
    tab.close(run_before_unload=True)
    context.close()
    return first, complete, load, views_first, views_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "modes", nargs="*", default=["warm", "cold"], choices=["warm", "cold", "binder"]
    )
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument(
        "--against",
        type=Path,
        default=None,
        help="another hessviz checkout (e.g. a git worktree of an older commit) to measure in "
        "turns with this one",
    )
    args = parser.parse_args()
    roots = [ROOT] if args.against is None else [ROOT, args.against.resolve()]
    for mode in args.modes:
        for root, views in measure(mode, args.views, roots).items():
            first, complete = sorted(v[0] for v in views), sorted(v[1] for v in views)
            loads = [v[2] for v in views]
            name = f" {root}" if len(roots) > 1 else ""
            print(
                f"{mode}{name}: first heatmap median {statistics.median(first):.2f} s, range "
                f"{first[0]:.2f}-{first[-1]:.2f} s; all panels median "
                f"{statistics.median(complete):.2f} s; "
                f"load average {min(loads):.1f}-{max(loads):.1f}"
            )


if __name__ == "__main__":
    main()
