"""Both explorers in JupyterLab, in a real browser: ``HessianExplorer.for_model``'s and the
dashboard's.

Starts ``python -m jupyter lab`` on a free localhost port with :mod:`hessviz.serve`'s server
extension enabled the way Binder enables it (``binder/jupyter_server_config.json`` in a
``jupyter_server_config.d`` on ``JUPYTER_CONFIG_PATH``), so plotly.js comes from the server's URL,
and a temporary notebook folder holding one generated notebook: cell 1 displays
``HessianExplorer.for_model`` of a small MLP with a hand-written ``forward``, cell 2 the dashboard's
explorer (``HessianExplorer.from_query(...).widget``). Headless Chromium (Debian's, through
Playwright; every request not for 127.0.0.1 blocked) opens the notebook with the server's token,
runs all cells with JupyterLab's own command (``notebook:run-all-cells``, reached through
``window.jupyterapp``: ``LabApp.expose_app_in_browser``) and checks that:

- every panel of both explorers draws a plot with data;
- the for_model Hessian and diagonal panels plot ``hv.hessian`` / ``hv.hessian_diagonal`` of the
  same model (same source, same seed) computed here, and the dashboard explorer plots the engine's
  numbers for the view its share link describes;
- plotly.js was loaded once for the page, from the server's URL; the page raised no errors.

The screenshot ``test-artifacts/jupyterlab-for_model-1366.png`` shows the for_model explorer in
JupyterLab at 1366 × 768. Outside CI a missing Chromium skips the test; with ``CI=true`` it fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from urllib.parse import parse_qs

import nbformat
import pytest
import torch
from test_dashboard_browser import (  # noqa: F401 - fixtures and helpers of the browser test
    ARTIFACTS,
    ROOT,
    _serve,
    block_other_hosts,
    chromium,
    engine_values,
)

import hessviz as hv

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TOKEN = secrets.token_hex(16)
NOTEBOOK = "for_model_in_lab.ipynb"
#: Kernel start, ``import torch`` and the first computations, on a loaded machine.
KERNEL_SECONDS = 120
PLOT_SECONDS = 120

#: The model of cell 1, run in the kernel and here: the same source and seed give the same weights.
MODEL_SOURCE = '''\
import torch
from torch import nn


class TinyMLP(nn.Module):
    """2 inputs -> 2 outputs; a hand-written forward with a product of two hidden vectors."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(2, 8), nn.Linear(2, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.fc1(x)) * torch.sigmoid(self.fc2(x)))


torch.manual_seed(1234)
model = TinyMLP().double()
x = torch.tensor([0.4, -0.7], dtype=torch.float64)
'''
EXPLORER_CELL = (
    MODEL_SOURCE
    + "\nfrom hessviz.widgets import HessianExplorer\n\n"
    + 'explorer = HessianExplorer.for_model(model, x, input_names=["speed", "angle"], '
    + 'output_names=["cost", "risk"])\nexplorer'
)
DASHBOARD_QUERY = "act=softplus&layers=8&n=2"
DASHBOARD_CELL = (
    "from hessviz.widgets import HessianExplorer\n\n"
    f'HessianExplorer.from_query("{DASHBOARD_QUERY}").widget'
)


def write_notebook(folder) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(EXPLORER_CELL), nbformat.v4.new_code_cell(DASHBOARD_CELL)]
    # The kernel the notebook names exists: JupyterLab starts it without asking.
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(nb, folder / NOTEBOOK)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``(url, log_path)`` of JupyterLab serving a notebook folder, hessviz.serve enabled."""
    tmp = tmp_path_factory.mktemp("lab")
    notebooks = tmp / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks)
    # A fresh user is asked whether to fetch Jupyter's news (a toast over the notebook): answered.
    notification = tmp / "lab-settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    config_path = tmp / "etc" / "jupyter"
    config_d = config_path / "jupyter_server_config.d"
    config_d.mkdir(parents=True)
    shutil.copy(ROOT / "binder" / "jupyter_server_config.json", config_d / "hessviz.json")
    args = [
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--IdentityProvider.token={TOKEN}",
        f"--ServerApp.root_dir={notebooks}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run JupyterLab's commands
        "--LabApp.news_url=None",  # offline: the server fetches no news feed
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:  # CI containers run as root
        args.append("--allow-root")
    env = {
        "JUPYTER_CONFIG_PATH": str(config_path),
        # JupyterLab's own state (settings, workspaces) stays out of the home directory.
        "JUPYTERLAB_SETTINGS_DIR": str(tmp / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "lab-workspaces"),
    }
    yield from _serve(tmp_path_factory, args, env=env, preheated=False)


def expected_model_values() -> dict:
    """``hv.hessian`` (output 0) and ``hv.hessian_diagonal`` of cell 1's model at its point."""
    namespace: dict = {}
    with torch.random.fork_rng():
        exec(MODEL_SOURCE, namespace)
    model, x = namespace["model"], namespace["x"]
    return {
        "hessian": hv.hessian(model, x, outputs=0).tolist(),
        "diagonal": hv.hessian_diagonal(model, x).tolist(),
    }


# The z of a named trace of a panel of one explorer (``root``: ``.hv-model`` or ``.hv-app``).
_TRACE = """([root, panel, name]) => {
    const div = document.querySelector(`${root} .hv-fig-${panel} .js-plotly-plot`);
    const trace = div && div.data && div.data.find((t) => t.name === name);
    return trace && trace.z ? Array.from(trace.z, (row) => Array.from(row)) : null;
}"""
# Every panel of an explorer has a plot holding data.
_ALL_DRAWN = """([root, count]) => {
    const panels = document.querySelectorAll(`${root} [class*="hv-fig-"]`);
    return panels.length >= count && Array.from(panels).every((p) => {
        const d = p.querySelector('.js-plotly-plot');
        return d && d.data && d.data.length > 0 && d.data[0] !== undefined; });
}"""


# Each cell of the open notebook, as JupyterLab's model holds it: execution count and outputs.
_CELLS = """() => Array.from(window.jupyterapp.shell.currentWidget.content.model.cells,
    (cell) => { const c = cell.toJSON();
                return {count: c.execution_count, outputs: c.outputs || []}; })"""


def assert_close(shown, expected, what: str, rtol: float = 1e-8, atol: float = 1e-10) -> None:
    assert shown is not None, f"{what}: nothing plotted"
    got = torch.tensor(shown, dtype=torch.float64)
    want = torch.tensor(expected, dtype=torch.float64)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=rtol, atol=atol), (
        f"{what}: plotted {json.dumps(shown)}\nexpected {json.dumps(expected)}"
    )


def wait(page, script: str, arg, what: str, seconds: float, log_path) -> None:
    try:
        page.wait_for_function(script, arg=arg, timeout=seconds * 1000, polling=250)
    except Exception as err:  # Playwright's TimeoutError
        pytest.fail(
            f"JupyterLab: {what} did not happen in {seconds} s ({err})\n"
            f"server log:\n{log_path.read_text()[-3000:]}"
        )


def test_both_explorers_draw_the_engines_numbers_in_jupyterlab(
    chromium,  # noqa: F811 - the imported fixture
    lab,
):
    url, log_path = lab
    page = chromium.new_page(viewport={"width": 1366, "height": 768})
    page_errors, console_errors = [], []
    page.on("pageerror", lambda err: page_errors.append(str(err)))
    page.on("console", lambda msg: msg.type == "error" and console_errors.append(msg.text))
    blocked = block_other_hosts(page)
    start = time.perf_counter()
    page.goto(f"{url}lab/tree/{NOTEBOOK}?token={TOKEN}", wait_until="domcontentloaded")

    # 1. The notebook is open and its kernel idle: then run every cell with JupyterLab's command.
    wait(
        page,
        """() => { const app = window.jupyterapp; const w = app && app.shell.currentWidget;
                   const kernel = w && w.sessionContext && w.sessionContext.session
                       && w.sessionContext.session.kernel;
                   return !!kernel && kernel.status === 'idle'
                       && document.querySelectorAll('.jp-Notebook .jp-CodeCell').length === 2; }""",
        None,
        "the notebook opening with an idle kernel",
        KERNEL_SECONDS,
        log_path,
    )
    opened = time.perf_counter() - start
    # Not awaited (a hung kernel must not hang the test): the waits below are bounded.
    page.evaluate(
        """() => { window.jupyterapp.commands.execute('notebook:run-all-cells')
                       .catch((err) => { globalThis.__runAllError = String(err); }); }"""
    )

    # 2. Both explorers draw every panel (for_model: 4 panels; dashboard: 7).
    drawing = "the {} explorer drawing every panel"
    wait(page, _ALL_DRAWN, [".hv-model", 4], drawing.format("for_model"), PLOT_SECONDS, log_path)
    for_model_drawn = time.perf_counter() - start
    wait(page, _ALL_DRAWN, [".hv-app", 7], drawing.format("dashboard"), PLOT_SECONDS, log_path)
    all_drawn = time.perf_counter() - start
    print(
        f"\nJupyterLab: notebook open, kernel idle {opened:.1f} s; for_model drawn "
        f"{for_model_drawn:.1f} s; both explorers drawn {all_drawn:.1f} s"
    )

    # 3. The plotted numbers are the engine's.
    expected = expected_model_values()
    assert_close(
        page.evaluate(_TRACE, [".hv-model", "hessian", "exact"]),
        expected["hessian"],
        "for_model Hessian of output 0",
    )
    assert_close(
        page.evaluate(_TRACE, [".hv-model", "diagonal", "diagonal"]),
        expected["diagonal"],
        "for_model diagonals",
    )
    link = page.evaluate("() => document.querySelector('.hv-app .hv-link input').value")
    query = link.partition("?")[2]
    state = {k: v[0] for k, v in parse_qs(query).items()}
    assert (state["act"], state["layers"], state["n"]) == ("softplus", "8", "2"), link
    dashboard_expected = engine_values(query)
    assert_close(
        page.evaluate(_TRACE, [".hv-app", "hessian", "exact"]),
        dashboard_expected["hessian"],
        f"dashboard explorer Hessian ({query})",
    )
    assert_close(
        page.evaluate(_TRACE, [".hv-app", "diagonal", "exact"]),
        dashboard_expected["diagonal"],
        f"dashboard explorer diagonals ({query})",
    )

    # 4. plotly.js came once, from the server (hessviz.serve's route), for both explorers.
    stats = page.evaluate("() => globalThis.__hessvizPlotlyStats")
    print(f"JupyterLab: plotly stats {stats}")
    assert stats["loads"] == 1 and stats["via"] == "url", stats

    # 5. A look at the for_model explorer as a JupyterLab user sees it.
    page.locator(".hv-model").first.evaluate("(e) => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(500)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-for_model-1366.png"))

    # 6. Nothing went wrong on the way: both cells ran, without an error output.
    cells = page.evaluate(_CELLS)
    assert [c["count"] is not None for c in cells] == [True, True], cells
    assert not [o for c in cells for o in c["outputs"] if o["output_type"] == "error"], cells
    stderr = [o["text"] for c in cells for o in c["outputs"] if o.get("name") == "stderr"]
    print(f"JupyterLab: stderr of the cells {stderr}")
    assert page.evaluate("() => globalThis.__runAllError") is None
    assert page.inner_text(".hv-model .hv-message").strip() == ""
    assert page.inner_text(".hv-app .hv-message").strip() == ""
    print(f"JupyterLab: console errors {console_errors}; blocked hosts {sorted(set(blocked))}")
    assert not blocked, f"the page tried to reach {sorted(set(blocked))}"
    assert not page_errors, page_errors
    page.close()
