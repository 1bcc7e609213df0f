"""The dashboard as Binder serves it: Voila inside a Jupyter server, configured by ``binder/``.

On Binder, the Jupyter server runs Voila as a server extension (pages at ``/voila/render/…``), and
``binder/postBuild`` copies ``binder/jupyter_server_config.json`` into the environment's
``jupyter_server_config.d``. That file enables :mod:`hessviz.serve`'s own server extension and culls
idle kernels. Here ``python -m jupyter_server`` finds the same file in the same place (through
``JUPYTER_CONFIG_PATH``) and requires a token, which the page is opened with, as a Binder link does.

Checked in headless Chromium: while the kernel starts, the page says so (hessviz's Voila template);
the page draws the engine's numbers; plotly.js came once, from the server's URL (not 5 MB through
the kernel per page); the token shows up neither as a note nor in the share link; closing the page
ends its kernel. Voila alone refuses that last request
(voila#1458), so on Binder every reload would keep another ~360 MB kernel in a pod of 2 GB.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time

import pytest
from test_dashboard_browser import (  # noqa: F401 - fixtures and helpers of the browser test
    DASHBOARD,
    INITIAL,
    ROOT,
    _serve,
    assert_plotly_is_the_servers_bundle,
    chromium,
    kernel_processes,
    link_state,
    server_process,
    shown,
    wait_for_engine_values,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TOKEN = secrets.token_hex(16)


@pytest.fixture(scope="module")
def binder(tmp_path_factory):
    """``(url, log_path)`` of a Jupyter server configured as ``binder/postBuild`` leaves it."""
    config_path = tmp_path_factory.mktemp("etc") / "jupyter"
    config_d = config_path / "jupyter_server_config.d"
    config_d.mkdir(parents=True)
    shutil.copy(ROOT / "binder" / "jupyter_server_config.json", config_d / "hessviz.json")
    # postBuild also merges it into jupyter_server_config.json: the server reads its settings
    # (Voila's template, kernel culling) from there only; from the .d folder, only extensions.
    shutil.copy(ROOT / "binder" / "jupyter_server_config.json", config_path)
    args = ["-m", "jupyter_server", "--no-browser", f"--IdentityProvider.token={TOKEN}"]
    if os.geteuid() == 0:  # CI containers run as root
        args.append("--allow-root")
    # postBuild copies share/jupyter/voila/templates/hessviz into the environment's data path.
    env = {"JUPYTER_CONFIG_PATH": str(config_path), "JUPYTER_PATH": str(ROOT / "share" / "jupyter")}
    yield from _serve(tmp_path_factory, args, env=env, preheated=False)


def test_binder_page_draws_with_the_servers_plotly_code_and_ends_its_kernel_on_close(
    chromium,  # noqa: F811 - the imported fixture
    binder,
):
    url, log_path = binder
    server = server_process(url)
    query = INITIAL.replace("act=tanh", "act=sigmoid")
    context = chromium.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(
        f"{url}voila/render/{DASHBOARD.as_posix()}?token={TOKEN}&{query}",
        wait_until="commit",  # Voila streams the page: its head arrives before the kernel runs
    )
    detail = page.wait_for_selector("#hv-loading-detail", state="attached", timeout=60_000)
    assert "Python kernel is starting" in detail.text_content()
    page.wait_for_selector(".hv-fig-hessian .js-plotly-plot", timeout=90_000)
    wait_for_engine_values(page, query, "opening the Binder page")

    stats = page.evaluate("() => globalThis.__hessvizPlotlyStats")
    assert stats["via"] == "url" and stats["loads"] == 1, stats
    assert_plotly_is_the_servers_bundle(page)
    assert page.inner_text(".hv-notes").strip() == "", "the login token is no view key: no note"
    assert "token" not in link_state(page) and TOKEN not in shown(page)["link"]

    kernel_id = page.evaluate(
        "() => JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId"
    )
    assert kernel_id in kernel_processes(server)
    page.close(run_before_unload=True)  # what closing the tab does
    context.close()
    deadline = time.monotonic() + 30
    while kernel_id in kernel_processes(server) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert kernel_id not in kernel_processes(server), (
        "the closed page's kernel still runs:\n" + log_path.read_text()[-2000:]
    )
    assert not errors, errors


def test_binder_settings_reach_the_server(binder):
    """Kernel culling and Voila's template are set in the server Binder runs (the .d folder alone
    enables extensions but its other settings were silently ignored)."""
    url, log_path = binder
    server = server_process(url)
    assert server.is_running()
    log = log_path.read_text()
    assert "Culling kernels with idle durations > 600 seconds" in log, log[-2000:]
