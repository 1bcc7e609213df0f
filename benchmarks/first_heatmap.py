"""Seconds from opening the dashboard to its first heatmap: warm, cold and as Binder serves it.

- ``warm``: ``python -m hessviz.serve`` (what ``./dev dashboard`` runs), whose pre-heated kernel has
  started Python and torch before the visitor comes;
- ``cold``: plain ``voila notebooks/dashboard.ipynb`` without a pre-heated kernel (what most Voila
  users run): each page starts its kernel;
- ``binder``: a Jupyter server configured as ``binder/postBuild`` leaves it (Voila as a server
  extension, hessviz's template and extension), no pre-heated kernel either.

Each view is a fresh browser context in headless Chromium (Debian's ``/usr/bin/chromium``) with
every non-local host unresolvable. Before it, the previous view's page is closed (its unload
handlers run, so the page asks its server to end its kernel), its kernel is gone where the
server ends closed pages' kernels (``warm``, ``binder``: hessviz's shim, waited for up to 30 s,
else noted; plain Voila, ``cold``, keeps them until the idle cull, voila#1458, so there they
stay, idle, as on a real server), and the servers are idle: their processes use < 10 % CPU for
a whole second and, warm, a pre-heated kernel that no page has used yet is waiting. A server
that is not idle within two minutes is reported, and the view is marked. Then it times page
open → the Hessian panel shows a heatmap (drawn, and visible: Voila's loading screen gone, the
plot laid out), and → all seven panels are drawn (the lower panels join the page after the first
heatmap), with the widget views on the page at each point. The load average before each view
is printed with it: these machines are shared, and a busy CPU stretches every number.

With ``--against PATH`` (another checkout, e.g. ``git worktree add /tmp/before HEAD~1``) the
views take turns between the two, one server each, so that both see the same load: on a shared
machine that is the comparison to trust.

Run:  .venv/bin/python benchmarks/first_heatmap.py [warm|cold|binder ...] [--views 3]
          [--against PATH]
"""

from __future__ import annotations

import argparse
import os
import re
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
KERNEL_FILE = re.compile(r"kernel-([0-9a-f-]{36})\.json")
#: Every host but this machine fails to resolve, in the browser itself: intercepting requests
#: with Playwright's page.route instead sent each of a page's ~100 requests through this script,
#: and lost the shutdown request of a page closed right after its first view.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",  # fmt: skip
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]  # fmt: skip
QUERY = "n=2&m=2&layers=8,8&act=tanh&seed=0&x=0.3,-1"
#: The Hessian panel shows a heatmap: plotly.js has drawn its image (``gd.data`` alone is set
#: before drawing), and the visitor can see it (a plot in a hidden container is drawn anyway
#: after 1.5 s, and Voila keeps its cells hidden behind the loading screen until they have run);
#: then the number of widget views on the page (each ipywidgets view's element has the class
#: ``jupyter-widgets``), else ``false``.
HEATMAP = """() => { const d = document.querySelector('.hv-fig-hessian .js-plotly-plot');
    return !!(d && d.data && d.data.length && d.data[0].z && d.data[0].z.length > 0
              && d.querySelector('.hm image') && d.offsetWidth > 0 && d.checkVisibility()
              && !document.getElementById('loading'))
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


def kernels(pid: int) -> dict[str, psutil.Process]:
    """Kernel id → process, for the kernels of the server ``pid`` (from their connection files,
    ``kernel-<id>.json``)."""
    found = {}
    for process in psutil.Process(pid).children(recursive=True):
        try:
            match = KERNEL_FILE.search(" ".join(process.cmdline()))
        except psutil.Error:
            continue
        if match:
            found[match.group(1)] = process
    return found


def wait_until_gone(pid: int, kernel: str, seconds: float = 30) -> bool:
    """Until the server ``pid`` has ended ``kernel``; ``False`` if it still runs after
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while kernel in kernels(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def wait_until_idle(pid: int, *, fresh_kernel: bool, used: set[str], seconds: float = 120) -> bool:
    """Until the server ``pid`` and its processes use < 10 % CPU for two samples in a row (one
    second) and, if ``fresh_kernel``, one of its kernels is not in ``used`` (a pre-heated kernel
    waiting for a page; a kernel a page has used does not count). ``False`` if that did not
    happen within ``seconds``."""
    root = psutil.Process(pid)
    deadline = time.monotonic() + seconds
    quiet = 0
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
        quiet = quiet + 1 if busy < 10 else 0
        if quiet >= 2 and (not fresh_kernel or set(kernels(pid)) - used):
            return True
    return False


def measure(mode: str, views: int, roots: list[Path]) -> dict[Path, list[tuple[float, ...]]]:
    """Checkout → ``(first heatmap s, all panels s, load average)`` for each of its views.

    One server per checkout; views take turns between them, so a change in the machine's load
    hits each alike."""
    servers, logs, tmps = {}, [], []
    times: dict[Path, list[tuple[float, ...]]] = {root: [] for root in roots}
    used: dict[Path, set[str]] = {root: set() for root in roots}  # kernels pages have had
    ends_kernels = mode != "cold"  # plain Voila keeps closed pages' kernels (voila#1458)
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
            else:
                raise SystemExit(f"{mode} server of {root} did not answer: {tmp / 'server.log'}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            for view in range(views):
                for root in roots if view % 2 == 0 else roots[::-1]:
                    process, url = servers[root]
                    idle = all([
                        wait_until_idle(
                            other.pid, fresh_kernel=mode == "warm", used=used[checkout]
                        )
                        for checkout, (other, _) in servers.items()
                    ])  # fmt: skip
                    *result, kernel = view_once(browser, url, mode)
                    used[root].add(kernel)
                    if ends_kernels and not wait_until_gone(process.pid, kernel):
                        print(f"  (the page's kernel outlived it by 30 s: {root})", flush=True)
                    times[root].append(tuple(result))
                    first, complete, load, views_first, views_all = result
                    name = f" {root}" if len(roots) > 1 else ""
                    print(f"{mode:6}{name} view {view + 1}: page open -> first heatmap "
                          f"{first:5.2f} s ({views_first} widget views), all panels "
                          f"{complete:5.2f} s ({views_all}) (load average {load:.1f} on "
                          f"{os.cpu_count()} CPUs)"
                          + ("" if idle else " [servers not idle after 120 s]"),
                          flush=True)  # fmt: skip
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


def view_once(browser, url: str, mode: str) -> tuple[float, float, float, int, int, str]:
    """One page view in a fresh context: ``(first heatmap s, all panels s, load average, widget
    views then, widget views at the end, the page's kernel id)``."""
    load = os.getloadavg()[0]
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    tab = context.new_page()
    start = time.perf_counter()
    tab.goto(url, wait_until="commit")
    views_first = tab.wait_for_function(HEATMAP, timeout=180_000, polling=50).json_value()
    first = time.perf_counter() - start
    views_all = tab.wait_for_function(ALL_DRAWN, timeout=180_000, polling=50).json_value()
    complete = time.perf_counter() - start
    kernel = tab.evaluate(
        "() => JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId"
    )
    # Closed as a visitor closes it: the page's unload handlers ask the server to end its
    # kernel. close(run_before_unload=True) does not wait for that; closing the context at once
    # cut it short (2 of 3 warm kernels outlived their pages).
    with tab.expect_event("close"):
        tab.close(run_before_unload=True)
    context.close()
    return first, complete, load, views_first, views_all, kernel


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
