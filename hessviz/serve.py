"""Serve the hessviz dashboard (``notebooks/dashboard.ipynb``) with Voila on localhost.

``python -m hessviz.serve [--port N] [--notebook PATH] [voila options...]`` is what
``./dev dashboard`` runs. The Voila options live in ``voila.json`` at the top of the checkout
(code cells hidden, no tracebacks sent to the page, no file serving, one pre-heated kernel so a
visitor does not wait for Python and torch to start); Voila reads it from the working directory,
so this module runs Voila from there. Only the one notebook is served: there is no file tree.
Options this module does not know are passed on to Voila unchanged (e.g. ``--show_tracebacks=True``
to debug).

Jupyter's runtime and data directories default to a fresh temporary folder, so connection files
and kernel state do not land in the home directory (set ``JUPYTER_RUNTIME_DIR`` /
``JUPYTER_DATA_DIR`` yourself to override). Kernel specs are still found in the environment.

The server also serves plotly's FigureWidget bundle at :data:`BUNDLE_ROUTE`, so the dashboard can
call :func:`share_widget_bundle`: every FigureWidget then loads that one URL (fetched and compiled
once per page) instead of carrying its own 5 MB copy of the code. With the explorer's seven panels
that is the difference between ~5 s and ~16 s from opening the page to seeing every plot.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

DASHBOARD = Path("notebooks") / "dashboard.ipynb"
#: Where the server serves plotly's widget bundle, relative to its base URL.
BUNDLE_ROUTE = "hessviz/static/widgetbundle.js"
#: Set for the kernels of this server: the bundle's path, absolute on the server.
BUNDLE_ENV = "HESSVIZ_WIDGET_BUNDLE_PATH"
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
    if not os.environ.get(BUNDLE_ENV) or not host:
        return None
    port = os.environ.get("SERVER_PORT")
    scheme = os.environ.get("HTTP_X_FORWARDED_PROTO", "http").split(",")[0].strip() or "http"
    # All three come from request headers: anything but a host name or address, a port number and
    # http(s) is refused, so a forged header cannot turn the page's script URL into another one.
    if not (_HOST.fullmatch(host) and _PORT.fullmatch(port or "0") and scheme in _SCHEMES):
        return None
    return f"{scheme}://{host}{f':{port}' if port else ''}"


def share_widget_bundle() -> str | None:
    """In a kernel of this server, make new FigureWidgets load plotly's code from the server.

    Each plotly ``FigureWidget`` normally sends its own copy of plotly's 5 MB widget bundle to the
    page, which compiles it once per widget (anywidget even gives up waiting after 2 s). An
    ``http(s)`` URL instead is fetched and compiled once. The URL uses the address the visitor's
    browser used, so it also works through an SSH tunnel. Anywhere else — JupyterLab, Binder's
    Voila — it changes nothing.

    Returns:
        The bundle's URL, or ``None`` when not running under ``hessviz.serve``.

    Example:
        >>> share_widget_bundle() is None  # not in a kernel of hessviz.serve
        True
    """
    origin = _visitor_origin()
    if origin is None:
        return None
    from plotly.basewidget import BaseFigureWidget

    url = origin + os.environ[BUNDLE_ENV]
    BaseFigureWidget._esm = url  # read by anywidget when each FigureWidget is created
    return url


def page_url() -> str:
    """The dashboard's address as the visitor opened it (no query), or ``""`` when unknown.

    The explorer prefixes its share link with it, so the link can be pasted anywhere.

    Example:
        >>> page_url()  # not in a kernel of hessviz.serve: links stay relative ("?act=…")
        ''
    """
    origin = _visitor_origin()
    return "" if origin is None else origin + os.environ.get("SCRIPT_NAME", "/")


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
    print(f"hessviz dashboard: http://127.0.0.1:{port}/  (Ctrl+C to stop)", flush=True)

    sys.argv = ["voila"]
    _voila_app().launch_instance(argv=voila_argv(notebook.relative_to(root), port, extra))


def _voila_app():
    """Voila, plus one static route: plotly's widget bundle (see :func:`share_widget_bundle`)."""
    import plotly
    from jupyter_server.utils import url_path_join
    from tornado.web import StaticFileHandler
    from voila.app import Voila

    folder, name = os.path.split(BUNDLE_ROUTE)

    class HessvizVoila(Voila):
        def init_settings(self):
            # Before the kernel manager exists: (pre-heated) kernels inherit the environment.
            os.environ[BUNDLE_ENV] = url_path_join(self.server_url or self.base_url, BUNDLE_ROUTE)
            return super().init_settings()

        def init_handlers(self):
            route = url_path_join(self.server_url, folder, f"({name.replace('.', '[.]')})")
            bundle_dir = os.path.join(os.path.dirname(plotly.__file__), "package_data")
            # First: Voila's last route sends every other path to the notebook.
            return [(route, StaticFileHandler, {"path": bundle_dir}), *super().init_handlers()]

    return HessvizVoila


if __name__ == "__main__":
    main()
