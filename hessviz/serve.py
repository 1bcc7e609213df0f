"""Serve the hessviz dashboard (``notebooks/dashboard.ipynb``) with Voila on localhost.

``python -m hessviz.serve [--port N] [--notebook PATH] [voila options...]`` is what
``./dev dashboard`` runs. The Voila options live in ``voila.json`` at the top of the checkout
(code cells hidden, no tracebacks sent to the page, no file serving, one pre-heated kernel so a
visitor does not wait for Python and torch to start); Voila reads it from the working directory,
so this module runs Voila from there. Only the one notebook is served: there is no file tree.
Options this module does not know are passed on to Voila unchanged (e.g. ``--show_tracebacks=True``
to debug).

The URL is printed once the server answers. Ctrl+C stops it: Voila shuts its kernels down and the
command ends without a traceback.

Jupyter's runtime and data directories default to a fresh temporary folder, so connection files
and kernel state do not land in the home directory (set ``JUPYTER_RUNTIME_DIR`` /
``JUPYTER_DATA_DIR`` yourself to override). Kernel specs are still found in the environment.

Kernels of this server get :data:`SERVE_ENV` set, so :func:`page_url` can tell the dashboard the
address the visitor opened (for its share link), and :data:`PLOTLY_JS_ENV`: Voila serves
plotly.js (its ``extra_labextensions_path`` setting, pointed at a folder holding only that file:
plotly.js's cartesian bundle where ``./dev`` installed it, else plotly.py's full one, see
:mod:`hessviz._plotly_bundle`) and the dashboard's plots load it from there, once per page (see
:mod:`hessviz.widgets.figure_widget`). The file's name carries its version and bundle, so this
server lets browsers cache it for good (jupyter_server's ``static_immutable_cache`` setting, through
Voila's ``tornado_settings``): a later page view does not ask for it again.

The module is also a Jupyter server extension, for Voila running inside a Jupyter server (Binder:
``binder/jupyter_server_config.json`` enables it). It serves plotly.js there too, under a fixed
name (the template's URL is in that static configuration file), so browsers revalidate it on each
page view (a ``304 Not Modified``, no download) rather than cache it for good. Voila's bug
voila#1458 (closed pages keep their kernels) is worked around in :mod:`hessviz._shims`.
Importing this module does not import torch (see :mod:`hessviz`), so no server holds torch for
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import functools
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import _plotly_bundle

DASHBOARD = Path("notebooks") / "dashboard.ipynb"
#: hessviz's Voila template, in ``share/jupyter/voila/templates/`` of the checkout.
TEMPLATE = "hessviz"
#: Set (to "1") in the environment of this server's kernels.
SERVE_ENV = "HESSVIZ_SERVE"
#: Set for the kernels of a server that serves plotly.js: its path, absolute on the server.
PLOTLY_JS_ENV = "HESSVIZ_PLOTLY_JS_PATH"
#: Where the Jupyter server extension serves plotly.js (``plotly.min.js?v=<version>[-cartesian]``).
PLOTLY_JS_ROUTE = "hessviz/static"
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")  # name, IPv4 or [IPv6]
_PORT = re.compile("[0-9]{1,5}")
_SCHEMES = ("http", "https")


def _visitor_origin() -> str | None:
    """``scheme://host[:port]`` as the visitor's browser addressed this server, if known.

    Voila hands the kernel the request's ``Host`` as ``SERVER_NAME``/``SERVER_PORT`` (with
    pre-heated kernels: after ``voila.utils.wait_for_request()``); ``voila.json`` forwards a
    proxy's ``X-Forwarded-Proto``. ``None`` outside a kernel of :func:`main`'s server.
    """
    host = os.environ.get("SERVER_NAME")
    if not os.environ.get(SERVE_ENV) or not host:
        return None
    port = os.environ.get("SERVER_PORT")
    scheme = os.environ.get("HTTP_X_FORWARDED_PROTO", "http").split(",")[0].strip() or "http"
    # All three come from request headers: anything but a host name or address, a port number and
    # http(s) is refused, so a forged header cannot turn the share link into another one.
    if not (_HOST.fullmatch(host) and _PORT.fullmatch(port or "0") and scheme in _SCHEMES):
        return None
    return f"{scheme}://{host}{f':{port}' if port else ''}"


def page_url() -> str:
    """The dashboard's address as the visitor opened it (no query), or ``""`` when unknown.

    The explorer prefixes its share link with it, so the link can be pasted anywhere.

    Example:
        >>> page_url()  # not in a kernel of hessviz.serve: links stay relative ("?act=…")
        ''
    """
    origin = _visitor_origin()
    return "" if origin is None else origin + os.environ.get("SCRIPT_NAME", "/")


def wait_for_visitor(prepare: Callable[[], object] | None = None) -> None:
    """In a pre-heated Voila kernel: call ``prepare()``, then wait until a visitor opens the page
    (Voila then hands the kernel the request: ``QUERY_STRING``, ``SERVER_NAME``…). Elsewhere:
    return at once, without calling ``prepare``.

    ``prepare`` is for one-time work that the first view would otherwise do while the visitor
    waits (the dashboard passes :meth:`hessviz.widgets.HessianExplorer.warm_up`: first-call
    imports and caches; its kernel's first view then took 0.2–0.3 s instead of 0.6–0.8 s here, on
    a busy 2-core machine). Without pre-heating a visitor waits for it either way, so it is
    skipped there.

    ``voila.utils.wait_for_request`` does the same wait, but importing it costs ~2 s of CPU (it
    imports Voila's server side, JupyterLab's server included), which every kernel without
    pre-heating (plain ``voila``, Binder, JupyterLab) paid before its first plot for nothing.

    Example:
        >>> wait_for_visitor(prepare=print)  # not a pre-heated Voila kernel: returns at once
    """
    if os.environ.get("VOILA_PREHEAT", "False") == "False":
        return
    if prepare is not None:
        prepare()
    from voila.utils import wait_for_request

    wait_for_request()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_checkout(start: Path | None = None) -> Path:
    """The folder holding ``notebooks/dashboard.ipynb`` and ``voila.json``: cwd or this checkout."""
    candidates = [Path.cwd() if start is None else start, Path(__file__).resolve().parents[1]]
    for root in candidates:
        if (root / DASHBOARD).is_file():
            return root
    raise SystemExit(
        f"hessviz.serve: cannot find {DASHBOARD} in {candidates[0]} or {candidates[1]}; run it "
        "from a hessviz checkout (./dev dashboard) or pass --notebook PATH."
    )


def private_jupyter_dirs() -> Path | None:
    """Point unset JUPYTER_RUNTIME_DIR / JUPYTER_DATA_DIR at a temp folder removed at exit."""
    missing = [k for k in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR") if not os.environ.get(k)]
    if not missing:
        return None
    tmp = Path(tempfile.mkdtemp(prefix="hessviz-jupyter-"))
    for key in missing:
        folder = tmp / key.split("_")[1].lower()  # runtime, data
        folder.mkdir()
        os.environ[key] = str(folder)
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return tmp


def voila_argv(notebook: Path, port: int, extra: list[str]) -> list[str]:
    """Command-line arguments for ``voila``; everything else comes from ``voila.json``."""
    return [str(notebook), f"--port={port}", "--no-browser", *extra]


def _has_template(root: Path) -> bool:
    return (root / "share" / "jupyter" / "voila" / "templates" / TEMPLATE / "conf.json").is_file()


def plotly_js_file() -> Path:
    """The plotly.js file pages get: plotly.js's cartesian bundle where ``./dev`` or
    ``binder/postBuild`` installed it, else plotly.py's full copy (see
    :func:`hessviz._plotly_bundle.bundle`); found without importing plotly (this server does not).
    """
    return _plotly_bundle.bundle()


def plotly_js_version() -> str:
    """The version of :func:`plotly_js_file`: plotly.py's plotly.js (e.g. ``"4.1.1"``)."""
    return _plotly_bundle.full_version()


def plotly_js_folder(name: str | None = None) -> Path:
    """A temporary folder holding only ``hessviz/<name>``: :func:`plotly_js_file`, by default
    named for its bundle and version (``plotly-cartesian-4.1.1.min.js``, ``plotly-4.1.1.min.js``).

    Voila serves it, through its own ``extra_labextensions_path`` setting, at
    ``<base>/voila/labextensions/hessviz/<name>``; the folder is removed at exit.
    """
    source = plotly_js_file()
    folder = Path(tempfile.mkdtemp(prefix="hessviz-static-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "hessviz").mkdir()
    target = folder / "hessviz" / (name or _plotly_bundle.served_name(source))
    try:  # Voila refuses to serve a symbolic link that leads out of the folder
        os.link(source, target)
    except OSError:  # another file system
        shutil.copyfile(source, target)
    return folder


def wait_until_serving(port: int, timeout: float = 120.0, base: str = "/") -> bool:
    """Whether the server on ``port`` answers (a static file: asking for the page would start a
    kernel) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    probe = f"http://127.0.0.1:{port}{base}voila/static/voila.js"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(probe, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hessviz.serve",
        description="Serve the hessviz Voila dashboard on localhost and print its URL.",
        epilog="Unknown options are passed to Voila (e.g. --show_tracebacks=True).",
    )
    parser.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    parser.add_argument("--notebook", type=Path, default=None, help="notebook to serve")
    args, extra = parser.parse_known_args(argv)

    root = find_checkout() if args.notebook is None else args.notebook.resolve().parents[1]
    notebook = (root / DASHBOARD) if args.notebook is None else args.notebook.resolve()
    port = args.port if args.port is not None else free_port()
    if not 0 < port < 65536:
        parser.error(f"--port must be between 1 and 65535, got {port}")

    os.chdir(root)  # Voila reads voila.json from the working directory
    private_jupyter_dirs()
    # hessviz's Voila template (share/jupyter/voila/templates/hessviz: the "lab" template with a
    # loading message that says what the visitor waits for) is found through Jupyter's data path.
    data_path = [str(root / "share" / "jupyter"), os.environ.get("JUPYTER_PATH", "")]
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in data_path if p)
    static = plotly_js_folder()
    (script,) = (static / "hessviz").iterdir()
    from . import _shims

    app = _shims.voila_app().instance()
    ours = [f"--VoilaConfiguration.extra_labextensions_path={static}"]
    if _has_template(root):
        # The template has the page fetch plotly.js while the notebook runs (see its index.html.j2).
        resources = {"hessviz": {"plotly_js": f"voila/labextensions/hessviz/{script.name}"}}
        ours += [
            f"--VoilaConfiguration.template={TEMPLATE}",
            f"--VoilaConfiguration.resources={resources!r}",
        ]
    app.initialize(voila_argv(notebook.relative_to(root), port, [*ours, *extra]))  # extra wins
    base = "/" + app.base_url.strip("/") + "/" if app.base_url.strip("/") else "/"
    # The file's name says its version and bundle: browsers may keep it (jupyter_server's setting
    # for such files; Voila applies tornado_settings when it starts, and marks its
    # labextensions "no-cache" otherwise).
    immutable = [*app.tornado_settings.get("static_immutable_cache", [])]
    app.tornado_settings = {
        **app.tornado_settings,
        "static_immutable_cache": [*immutable, f"{base}voila/labextensions/hessviz/"],
    }
    # Kernels (started by app.start()) inherit the environment: they learn they run here, and
    # where plotly.js is.
    os.environ[SERVE_ENV] = "1"
    os.environ[PLOTLY_JS_ENV] = f"{base}voila/labextensions/hessviz/{script.name}"
    url = f"http://127.0.0.1:{app.port}{base}"

    def announce() -> None:
        if wait_until_serving(app.port, base=base):
            print(f"hessviz dashboard: {url}  (Ctrl+C to stop)", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl+C, or kill
        signal.signal(signum, functools.partial(_stop, app))
    try:
        app.start()
    except KeyboardInterrupt:  # before the server ran: nothing to shut down
        pass
    print("hessviz dashboard: stopped", flush=True)


def _stop(app, signum: int, frame=None) -> None:
    """Ctrl+C / SIGTERM: end the kernels, then the server's loop (a second signal waits).

    The kernels are ended at once rather than asked to shut down: the pre-heated one is still
    running its cell (waiting for a visitor), and asked nicely it printed a ``ZMQError``
    traceback about the reply it could no longer send. They hold nothing worth saving. Ended,
    that kernel's cell fails in Voila's renderer if it notices before the loop stops (1 stop in
    ~10 under load), which it logged as an error with a traceback: from here on the process
    only stops, so its log is quiet below CRITICAL.
    """
    loop = getattr(app, "ioloop", None)
    if loop is None:  # not serving yet
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("hessviz dashboard: stopping", flush=True)
    logging.disable(logging.ERROR)

    async def shutdown() -> None:
        from jupyter_core.utils import ensure_async

        try:
            await ensure_async(app.kernel_manager.shutdown_all(now=True))
        finally:
            loop.stop()

    loop.asyncio_loop.call_soon_threadsafe(lambda: asyncio.ensure_future(shutdown()))


# hessviz.serve as a Jupyter server extension: what Binder runs. There Voila is itself an extension
# of the Jupyter server (pages at /voila/render/...), and this one, next to it, gives those pages
# what `python -m hessviz.serve` gives its own. tests/test_dashboard_binder.py serves it that way.


def _jupyter_server_extension_points():
    return [{"module": "hessviz.serve"}]


def _load_jupyter_server_extension(server_app) -> None:
    """Serve plotly.js at :data:`PLOTLY_JS_ROUTE` and point the kernels at it."""
    from jupyter_server.base.handlers import FileFindHandler
    from jupyter_server.utils import url_path_join

    base_url = server_app.web_app.settings["base_url"]
    # A fixed name, "plotly.min.js": binder/jupyter_server_config.json gives hessviz's template
    # that URL (without a version: browsers revalidate it, "no-cache").
    folder = plotly_js_folder("plotly.min.js") / "hessviz"
    route = url_path_join(base_url, PLOTLY_JS_ROUTE, r"(plotly\.min\.js)")
    server_app.web_app.add_handlers(".*$", [(route, FileFindHandler, {"path": str(folder)})])
    # Version and bundle in the query: another plotly.js is another URL for the browser's cache.
    path = url_path_join(base_url, PLOTLY_JS_ROUTE, "plotly.min.js")
    variant = "-cartesian" if plotly_js_file() != _plotly_bundle.full_bundle() else ""
    os.environ[PLOTLY_JS_ENV] = f"{path}?v={plotly_js_version()}{variant}"


async def _start_jupyter_server_extension(server_app) -> None:
    """Once every extension has added its routes: the voila#1458 page handler (see _shims)."""
    from . import _shims

    if _shims.use_page_handler(server_app.web_app) == 0:
        server_app.log.warning(
            "hessviz.serve: no Voila page route found (is Voila's server extension enabled?); "
            "closed Voila pages keep their kernels until the idle cull"
        )


if __name__ == "__main__":
    main()
