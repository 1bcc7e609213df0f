"""Each workaround in :mod:`hessviz._shims` is still needed, and still works.

The first test of each pair checks the upstream bug on the installed version: when it fails,
upstream has fixed the bug; delete the workaround, its version guard and these tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import nbformat
import pytest

from hessviz import _shims, serve

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_notebook(tmp_path):
    """A one-cell notebook in ``tmp_path/notebooks/`` (a kernel starts in ~2 s, no torch)."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    path = folder / "tiny.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hello')")])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


def page_cookies(args: list[str], cwd, tmp_path) -> list[str]:
    """Start ``python <args> --port=N``, GET its page, return the Set-Cookie headers; stop it."""
    port = serve.free_port()
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, *args, f"--port={port}"],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # stopped by its process group id below, never by name
    )
    try:
        assert serve.wait_until_serving(port, timeout=60), (tmp_path / "server.log").read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as response:
            return response.headers.get_all("Set-Cookie") or []
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_voila_1458_plain_voila_still_sets_no_xsrf_cookie(tiny_notebook, tmp_path):
    """If this fails, Voila sets the cookie itself now: remove the voila#1458 shim."""
    assert _shims.voila_1458_applies(), "the version guard no longer covers the installed Voila"
    args = ["-m", "voila", tiny_notebook.name, "--no-browser", "--Voila.ip=127.0.0.1"]
    cookies = page_cookies(args, tiny_notebook.parent, tmp_path)
    assert not [c for c in cookies if c.startswith("_xsrf=")], (
        "Voila now sets the _xsrf cookie (voila#1458 fixed): delete the shim in hessviz/_shims.py"
    )


def test_voila_1458_shim_sets_the_cookie(tiny_notebook, tmp_path):
    args = ["-m", "hessviz.serve", f"--notebook={tiny_notebook}"]
    cookies = page_cookies(args, tmp_path, tmp_path)
    assert [c for c in cookies if c.startswith("_xsrf=")], cookies


def test_voila_1458_shim_swaps_only_voilas_page_handler():
    voila_page, fixed_page = _shims.page_handlers()
    assert issubclass(fixed_page, voila_page)
    app = _shims.voila_app()
    assert app.__mro__[1].__name__ == "Voila" and app.init_handlers is not None


def test_torch_still_warns_about_leafspec_when_its_own_specs_are_copied():
    """The bug: deep-copying a pytree spec (what Inductor's compile wrapper does to every
    graph it compiles, with the graph's input and output specs) makes LeafSpecs, and torch
    warns about them. Fails once torch stops: then delete ``quiet_leafspec_warning``, its
    version guard and its use in ``hessviz/compiled.py``."""
    import copy
    import warnings

    import torch
    from torch.utils import _pytree

    assert torch.__version__.startswith(_shims.TORCH_LEAFSPEC_VERSIONS), (
        f"the version guard no longer covers torch {torch.__version__}: check whether it still "
        "warns, then widen the guard or delete the shim"
    )
    spec = _pytree.tree_flatten((1.0, 2.0))[1]  # a tuple of two leaves
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        copy.deepcopy(spec)
    messages = [str(w.message) for w in shown if issubclass(w.category, FutureWarning)]
    assert any("LeafSpec" in m for m in messages), (
        "torch no longer warns about LeafSpec when a spec is copied: delete the shim"
    )
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        with _shims.quiet_leafspec_warning():  # its filter goes before "always"
            copy.deepcopy(spec)
            warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in quiet] == ["another FutureWarning"]


def test_anywidget_still_drops_the_updates_of_a_model_not_ready_in_two_seconds():
    """The installed anywidget's front end (the JupyterLab/Voila bundle and the classic
    notebook's) still rejects a model's ``ready`` promise two seconds after the model was made,
    the promise every later kernel message waits on (``_handle_comm_msg``); the version guard
    covers it. Fails once anywidget stops doing so: then delete ``PlotPanel``'s replacement."""
    import re
    from pathlib import Path

    import anywidget

    assert _shims.anywidget_drops_updates(), anywidget.__version__
    root = Path(anywidget.__file__).parent
    bundles = [p for p in root.rglob("*.js") if "Failed to initialize model" in p.read_text()]
    assert {p.parent.name for p in bundles} >= {"static", "nbextension"}, bundles
    late = re.compile(
        r"AbortSignal\.timeout\((2000|2e3)\)[^;]{0,120}reject\(new Error\(\"\[anywidget\] Failed"
        r" to initialize model\.\"\)"
    )
    for bundle in bundles:
        text = bundle.read_text()
        assert late.search(text), f"{bundle}: the two-second rejection is gone"
        assert "_handle_comm_msg" in text and re.search(r"await\s+runtime\b|\.ready\b", text)
