"""The Voila dashboard in a real browser: it renders, reacts, and plots the engine's numbers.

Starts ``python -m hessviz.serve`` (Voila, with the repository's ``voila.json``) on a free localhost
port, drives headless Chromium through Playwright (Debian's ``/usr/bin/chromium``; no browser
download) with every request that is not for 127.0.0.1 blocked, and checks that:

- the widgets and the heatmaps appear (the time from opening the page to the first heatmap is
  printed and written to ``test-artifacts/dashboard-timing.txt``);
- changing the activation, an input slider and the architecture changes the plotted Hessian and
  diagonals, and they equal ``hv.hessian`` / ``hv.hessian_diagonal`` computed here for the same
  ``hv.mlp`` (same sizes, activation and seed give the same weights);
- the page raises no errors beyond :data:`ALLOWED_CONSOLE_ERRORS` and shows no error text.

Screenshots go to ``test-artifacts/``. Outside CI a missing Chromium skips the test; with
``CI=true`` it fails (``./dev test`` installs Debian's chromium when it is missing).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import psutil
import pytest
import torch
from playwright.sync_api import sync_playwright

import hessviz as hv
from hessviz import _shims, serve
from hessviz._plotly_bundle import trace_types

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = Path("notebooks") / "dashboard.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
# Flags that keep Chromium quiet and offline in a container (see shared FIELD-NOTES).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
#: Hosts the page may try to reach and that are blocked without harm: Voila's lab template links
#: Font Awesome's CSS from this CDN (the icons are decorative).
ALLOWED_BLOCKED_HOSTS = {"cdn.jsdelivr.net"}
#: Console errors that are expected offline: the blocked CDN stylesheets above.
ALLOWED_CONSOLE_ERRORS = ("Failed to load resource: net::ERR_FAILED",)
#: Text that must never be on the page (tracebacks, Voila's failed-cell message).
ERROR_TEXT = ("Traceback", "There was an error when executing cell", "Exception", "Error:")

INITIAL = "n=2&m=2&layers=8,8&act=tanh&seed=0&x=0.3,-1&out=0&dtype=float64"
SERVER_START_SECONDS = 60
UPDATE_SECONDS = 30

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def server_process(url: str) -> psutil.Process:
    """The server :func:`_serve` started for ``url`` (``python … --port=N``), found to read it."""
    flag = f"--port={urlparse(url).port}"
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline[:1] == [sys.executable] and flag in cmdline:
            return process
    pytest.fail(f"no server process with {flag}")


def kernel_processes(server: psutil.Process) -> dict[str, psutil.Process]:
    """Kernel id → process for the running kernels of ``server`` (named in their connection files).

    A kernel that has exited but is not yet reaped (a zombie) is left out: it has ended.
    """
    found = {}
    for child in server.children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "ipykernel" in cmdline and "kernel-" in cmdline:
            kernel_id = cmdline.split("kernel-", 1)[1].split(".json", 1)[0]
            found[kernel_id] = child
    return found


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def chromium():
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} not found: install Debian's chromium (./dev test does)"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """``(url, log_path)`` of ``python -m hessviz.serve`` started for this module."""
    yield from _serve(tmp_path_factory, ["-m", "hessviz.serve"])


@pytest.fixture(scope="module")
def plain_voila(tmp_path_factory):
    """``(url, log_path)`` of plain ``voila`` on the dashboard, as Binder's Voila serves it: no
    hessviz route, so the figures get plotly's code through the kernel."""
    yield from _serve(tmp_path_factory, ["-m", "voila", str(DASHBOARD), "--no-browser"])


def _serve(tmp_path_factory, args: list[str], env: dict | None = None, preheated: bool = True):
    """Start a server (``python <args> --port=N`` in the checkout); stop it by its pid.

    ``env`` is added to the server's environment; ``preheated``: wait for Voila's pre-heated
    kernel too (a Jupyter server with Voila's extension starts kernels per visit only).
    """
    tmp = tmp_path_factory.mktemp("voila")
    port = _free_port()
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTER_DATA_DIR": str(tmp / "data"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        **(env or {}),
    }
    log_path = tmp / "voila.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, *args, f"--port={port}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped below by pid, never by name
        )
    try:
        _wait_until_serving(port, server, log_path, preheated)
        yield f"http://127.0.0.1:{port}/", log_path
    finally:
        _stop(server)


def _wait_until_serving(port, server, log_path, preheated=True):
    # Polling the page itself would start kernels; a static file does not.
    deadline = time.monotonic() + SERVER_START_SECONDS
    static_file = f"http://127.0.0.1:{port}/voila/static/voila.js"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"Voila exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(static_file, timeout=2):
                break
        except OSError:
            time.sleep(0.3)
    else:
        pytest.fail(f"Voila did not start in {SERVER_START_SECONDS} s:\n{log_path.read_text()}")
    if not preheated:
        return
    # voila.json pre-heats a kernel: it imports torch and hessviz, then waits for a visitor. Measure
    # the page a visitor gets from a ready server, not the server's own start-up: wait until that
    # kernel exists and the server and it are idle.
    server_proc = psutil.Process(server.pid)
    while time.monotonic() < deadline:
        family = [server_proc, *server_proc.children(recursive=True)]
        _cpu_percent(family)  # starts the measurement
        time.sleep(0.5)
        if len(family) > 1 and _cpu_percent(family) < 10:
            return


def _cpu_percent(processes) -> float:
    total = 0.0
    for process in processes:
        try:
            total += process.cpu_percent(interval=None)
        except psutil.Error:  # it ended meanwhile
            pass
    return total


def _stop(server):
    """SIGTERM to the server's process group; Voila then shuts its kernels down itself."""
    if server.poll() is not None:
        return
    kernels = psutil.Process(server.pid).children(recursive=True)  # own sessions: not in the group
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    _, alive = psutil.wait_procs(kernels, timeout=10)
    for kernel in alive:  # only if Voila could not stop them: by pid, never by name
        kernel.kill()


# -- what the page shows ------------------------------------------------------------------------
# The exact Hessian (panel 1) and the exact diagonals (panel 2) as plotted, and the share link.
_READ = """(() => {
    const exact = (panel) => {
        const div = document.querySelector(`.hv-fig-${panel} .js-plotly-plot`);
        const trace = div && div.data && div.data.find((t) => t.name === 'exact');
        return trace && trace.z ? Array.from(trace.z, (row) => Array.from(row)) : null;
    };
    const link = document.querySelector('.hv-link input');
    return {hessian: exact('hessian'), diagonal: exact('diagonal'), link: link && link.value};
})"""
_MATCHES = (
    "([expected, rtol, atol]) => { const shown = " + _READ + "();"
    """
    const close = (a, b) => Array.isArray(b)
        ? Array.isArray(a) && a.length === b.length && b.every((v, i) => close(a[i], v))
        : typeof a === 'number' && Math.abs(a - b) <= atol + rtol * Math.abs(b);
    return close(shown.hessian, expected.hessian) && close(shown.diagonal, expected.diagonal);
}"""
)


def block_other_hosts(page) -> list[str]:
    """Let the page reach 127.0.0.1 only; returns the list of hosts it tried to reach instead."""
    blocked: list[str] = []

    def route(r):
        host = urlparse(r.request.url).hostname
        if host == "127.0.0.1":
            r.continue_()
        else:
            blocked.append(host)
            r.abort()

    page.route("**/*", route)
    return blocked


def engine_values(query: str) -> dict:
    """The exact Hessian of output ``out`` and every output's diagonal, from ``hv`` directly."""
    q = {k: v[0] for k, v in parse_qs(query.lstrip("?")).items()}
    layers = [int(w) for w in q["layers"].split(",") if w]
    model = hv.mlp(
        [int(q["n"]), *layers, int(q["m"])], q["act"], seed=int(q["seed"]), dtype=torch.float64
    )
    x = torch.tensor([float(v) for v in q["x"].split(",")], dtype=torch.float64)
    return {
        "hessian": hv.hessian(model, x, outputs=int(q["out"])).tolist(),
        "diagonal": hv.hessian_diagonal(model, x).tolist(),
    }


def shown(page) -> dict:
    return page.evaluate(_READ)


def wait_for_engine_values(page, query: str, what: str) -> dict:
    """Wait until the plots equal the engine's values for ``query``; fail with both otherwise."""
    expected = engine_values(query)
    try:
        page.wait_for_function(_MATCHES, arg=[expected, 1e-7, 1e-10], timeout=UPDATE_SECONDS * 1000)
    except Exception as err:  # Playwright's TimeoutError
        pytest.fail(
            f"after {what}, the plots do not show the engine's values for {query}:\n"
            f"plotted  {json.dumps(shown(page))}\nexpected {json.dumps(expected)}\n({err})"
        )
    return shown(page)


def link_state(page) -> dict:
    """The view the page's share link describes (``http://…/?n=2&…``)."""
    query = shown(page)["link"].partition("?")[2]
    return {k: v[0] for k, v in parse_qs(query).items()}


def link_query(page, **changes) -> str:
    """The state of the page's share link, with ``changes`` applied (what we expect to see)."""
    state = {**link_state(page), **changes}
    return "&".join(f"{k}={v}" for k, v in state.items())


def screenshot(page, name: str, panels: bool = False) -> None:
    """The visible page; with ``panels``, also each panel (Voila scrolls inside a container)."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"))
    if panels:
        for box in page.locator('[class*="hv-fig-"]').all():
            panel = next(c for c in box.get_attribute("class").split() if c.startswith("hv-fig-"))
            section = box.locator("xpath=..")  # the panel with its title and explanation
            section.scroll_into_view_if_needed()
            section.screenshot(path=str(ARTIFACTS / f"dashboard-{name}-{panel[7:]}.png"))
        page.locator(".hv-app").evaluate("(e) => e.scrollIntoView()")


def assert_plotly_is_the_servers_bundle(page) -> None:
    """The page's plotly.js registers the trace types of the file the server chose (plotly.js's
    cartesian bundle where ./dev installed it, else plotly.py's full one)."""
    traces = page.evaluate("() => Object.keys(window.Plotly.PlotSchema.get().traces)")
    assert set(traces) == trace_types(serve.plotly_js_file()), sorted(traces)


# -- the test -----------------------------------------------------------------------------------
def test_dashboard_renders_reacts_and_matches_the_engine(chromium, dashboard):
    url, log_path = dashboard
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page_errors, console_errors = [], []
    page.on("pageerror", lambda err: page_errors.append(str(err)))
    page.on("console", lambda msg: msg.type == "error" and console_errors.append(msg.text))
    blocked = block_other_hosts(page)

    # 1. First render: widgets, then heatmaps holding the engine's numbers.
    start = time.perf_counter()
    page.goto(f"{url}?{INITIAL}", wait_until="domcontentloaded")
    page.wait_for_selector(".hv-fig-hessian .js-plotly-plot", timeout=90_000)
    page.wait_for_function(
        """() => { const d = document.querySelector('.hv-fig-hessian .js-plotly-plot');
                   return d && d.data && d.data.length && d.data[0].type === 'heatmap'
                       && d.data[0].z && d.data[0].z.length > 0; }""",
        timeout=60_000,
    )
    first_render = time.perf_counter() - start
    assert_plotly_is_the_servers_bundle(page)
    ARTIFACTS.mkdir(exist_ok=True)
    print(f"\ndashboard: page open -> first heatmap in {first_render:.2f} s")
    for selector in (".hv-activation select", ".hv-x0 .widget-readout", ".hv-layers .noUi-handle"):
        page.wait_for_selector(selector, timeout=30_000)
    first = wait_for_engine_values(page, INITIAL, "the first render")
    page.wait_for_function(
        """() => { const panels = document.querySelectorAll('[class*="hv-fig-"]');
                   return panels.length >= 7 && Array.from(panels).every((p) => {
                       const d = p.querySelector('.js-plotly-plot');
                       return d && d.data && d.data.length > 0; }); }""",
        timeout=60_000,
    )
    all_panels = time.perf_counter() - start
    assert link_state(page)["act"] == "tanh"
    assert shown(page)["link"].startswith(url + "?"), "the share link should be a full URL"
    print(f"dashboard: page open -> all seven panels drawn in {all_panels:.2f} s")
    (ARTIFACTS / "dashboard-timing.txt").write_text(
        f"page open -> first heatmap: {first_render:.2f} s\n"
        f"page open -> all panels drawn: {all_panels:.2f} s\n"
        f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n"
    )
    screenshot(page, "1-first", panels=True)

    # 2. Activation: tanh → softplus.
    page.select_option(".hv-activation select", "softplus")
    query = link_query(page, act="softplus")
    after_act = wait_for_engine_values(page, query, "choosing softplus")
    assert link_state(page)["act"] == "softplus"
    assert after_act["hessian"] != first["hessian"]
    screenshot(page, "2-softplus")

    # 3. An input slider: x0 = 0.3 → 1.25 (typed into the slider's readout).
    page.click(".hv-x0 .widget-readout")
    page.keyboard.press("Control+A")
    page.keyboard.type("1.25")
    page.keyboard.press("Enter")
    query = link_query(page, x="1.25,-1")
    after_x = wait_for_engine_values(page, query, "moving x0 to 1.25")
    assert link_state(page)["x"] == "1.25,-1"
    assert after_x["hessian"] != after_act["hessian"]
    screenshot(page, "3-x0")

    # 4. The architecture: one more hidden layer (the new layer's width is the slider default).
    page.focus(".hv-layers .noUi-handle")
    page.keyboard.press("ArrowRight")
    page.wait_for_function(
        "() => { const l = document.querySelector('.hv-link input');"
        " return l && /layers=\\d+,\\d+,\\d+&/.test(l.value); }",
        timeout=UPDATE_SECONDS * 1000,
    )
    state = link_state(page)
    assert (state["act"], state["x"]) == ("softplus", "1.25,-1")
    after_arch = wait_for_engine_values(page, link_query(page), "adding a hidden layer")
    assert after_arch["hessian"] != after_x["hessian"]
    screenshot(page, "4-three-layers", panels=True)

    # 5. Nothing went wrong on the way.
    text = page.inner_text("body")
    assert not [t for t in ERROR_TEXT if t in text], f"error text on the page:\n{text[:3000]}"
    assert page.inner_text(".hv-message").strip() == ""
    assert set(blocked) <= ALLOWED_BLOCKED_HOSTS, f"the page tried to reach {set(blocked)}"
    unexpected_console = [e for e in console_errors if not e.startswith(ALLOWED_CONSOLE_ERRORS)]
    # No page error at all, anywidget's "Failed to initialize model." included: each figure's
    # module is PlotWidget's small loader, which never makes anywidget wait on plotly.
    assert not page_errors and not unexpected_console, (page_errors, unexpected_console)
    page.close()


#: Run before the page's own scripts: holds every load of plotly's widget code (the loader's
#: ``__hessvizPlotlyCode`` map of load promises) until the test calls ``__hessvizRelease()``.
_HOLD_PLOTLY = """
globalThis.__hessvizHold = new Promise((release) => { globalThis.__hessvizRelease = release; });
globalThis.__hessvizPlotlyCode = new (class extends Map {
  set(key, load) {
    const held = load.then(async (module) => { await globalThis.__hessvizHold; return module; });
    return super.set(key, held);
  }
})();
"""


# Every widget module (anywidget's ESM, a small JavaScript blob) loads late: the page is busy for
# 2.1 s just before each import, so each model is still loading when anywidget's two seconds
# end — until the test sets __hessvizModulesOnTime.
_LATE_MODULES = """
(() => {
  const create = URL.createObjectURL;
  URL.createObjectURL = function (blob) {
    const module = blob instanceof Blob && blob.type === "text/javascript" && blob.size < 100000;
    if (module && !globalThis.__hessvizModulesOnTime) {
      globalThis.__hessvizLateModules = (globalThis.__hessvizLateModules ?? 0) + 1;
      const until = performance.now() + 2100;
      while (performance.now() < until) {}
    }
    return create.call(URL, blob);
  };
})();
"""


def test_plots_whose_module_loaded_late_still_update(chromium, dashboard):
    """A page too busy to load the plots' module within anywidget's two seconds (eight visitors
    on two cores, a slow laptop), played deterministically: anywidget then drops every later
    update to those models, and their plots would keep their first figure under a status line
    about another (``hessviz._shims``). The kernel notices that a page drew a plot but not its
    new figure and puts a fresh plot in its place, which the page draws."""
    url, _ = dashboard
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page_errors = []
    page.on("pageerror", lambda err: page_errors.append(str(err)))
    page.add_init_script(_LATE_MODULES)
    page.goto(f"{url}?{INITIAL}", wait_until="domcontentloaded")
    wait_for_engine_values(page, INITIAL, "the first view")  # drawn from the initial state
    late = page.evaluate("() => globalThis.__hessvizLateModules")
    assert late >= 7, late  # every plot's model (and plotly's) loaded late
    page.evaluate("() => { globalThis.__hessvizModulesOnTime = true; }")
    page.select_option(".hv-activation select", "sigmoid")
    query = INITIAL.replace("act=tanh", "act=sigmoid")
    wait_for_engine_values(page, query, "a change on a page whose plots loaded late")
    screenshot(page, "late-modules")
    assert page.locator(".hv-figure").count() == 7  # the replaced plots are gone from the page
    # anywidget's own rejections (the models it gave up on), nothing else
    assert all(_shims.ANYWIDGET_REJECTION in e for e in page_errors), page_errors
    page.close()


@pytest.mark.parametrize("server", ["dashboard", "plain_voila"])
def test_updates_that_arrive_while_plotly_loads_are_not_lost(chromium, server, request):
    """A slow device, played deterministically: plotly's code stays "loading" until the test
    releases it, and meanwhile a control changes and the kernel sends its figure updates.
    anywidget gives a figure's module 2 s and then drops every update to it;
    :class:`~hessviz.widgets.figure_widget.PlotWidget`'s ``initialize`` returns at once,
    and the changes that arrived before plotly could handle them are replayed, in order. Under
    ``hessviz.serve`` plotly's code comes from the server's URL; under plain Voila (Binder)
    through the kernel.
    """
    url, _ = request.getfixturevalue(server)
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page_errors = []
    page.on("pageerror", lambda err: page_errors.append(str(err)))
    page.add_init_script(_HOLD_PLOTLY)
    page.goto(f"{url}?{INITIAL}", wait_until="domcontentloaded")
    page.wait_for_selector(".hv-activation select", timeout=120_000)
    page.wait_for_timeout(2500)  # longer than anywidget's 2 s
    assert page.locator(".js-plotly-plot").count() == 0, "plotly's code should still be held"
    page.select_option(".hv-activation select", "sigmoid")
    page.wait_for_function(
        "() => /act=sigmoid/.test(document.querySelector('.hv-link input').value)",
        timeout=UPDATE_SECONDS * 1000,
    )
    page.wait_for_timeout(1000)  # the figure updates follow the link within the same handler
    page.evaluate("() => globalThis.__hessvizRelease()")
    query = INITIAL.replace("act=tanh", "act=sigmoid")
    wait_for_engine_values(page, query, "a change while plotly loaded")
    stats = page.evaluate("() => globalThis.__hessvizPlotlyStats")
    print(f"\nheld page: {stats}")
    assert stats["loads"] == 1, stats  # one compile for the page's seven figures
    assert stats["via"] == {"dashboard": "url", "plain_voila": "kernel"}[server], stats
    assert stats["replayed"] > 0, stats  # the change above reached the figures before plotly did
    assert not page_errors, page_errors
    page.close()
