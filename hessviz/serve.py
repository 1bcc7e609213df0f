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

Kernels of this server get :data:`SERVE_ENV` set, so :func:`page_url` can tell the dashboard the
address the visitor opened (for its share link), and :data:`BUNDLE_ENV`: the server also serves
plotly's FigureWidget code at :data:`BUNDLE_ROUTE`, and the dashboard's figures load it from there
(see :mod:`hessviz.widgets.figure_widget`).

The module is also a Jupyter server extension, for Voila running inside a Jupyter server (Binder:
``binder/jupyter_server_config.json`` enables it). It adds the same route and page handler there.
Importing it does not import torch (see :mod:`hessviz`), so no server holds torch for nothing.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

DASHBOARD = Path("notebooks") / "dashboard.ipynb"
#: Set (to "1") in the environment of this server's kernels.
SERVE_ENV = "HESSVIZ_SERVE"
#: Where the server serves plotly's FigureWidget code, relative to its base URL.
BUNDLE_ROUTE = "hessviz/static/widgetbundle.js"
#: Set for the kernels of this server: that code's path, absolute on the server.
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
    """Voila, plus plotly's widget code at :data:`BUNDLE_ROUTE`, and a page that ends its kernel.

    - Kernels get :data:`SERVE_ENV` and :data:`BUNDLE_ENV` (the code's path on this server), so
      :class:`~hessviz.widgets.figure_widget.SharedFigureWidget` pages load plotly's 5 MB of
      browser code from that URL (cached by the browser) instead of through the kernel's
      websocket, which also kept a copy in this server per page view.
    - The page handler is :func:`_page_handlers`' one, which lets a closed page end its kernel.
    """
    from jupyter_server.utils import url_path_join
    from tornado.web import StaticFileHandler
    from voila.app import Voila

    voila_page, dashboard_page = _page_handlers()

    class HessvizVoila(Voila):
        def init_settings(self):
            # Before the kernel manager exists: (pre-heated) kernels inherit the environment.
            os.environ[SERVE_ENV] = "1"
            os.environ[BUNDLE_ENV] = url_path_join(self.server_url or self.base_url, BUNDLE_ROUTE)
            return super().init_settings()

        def init_handlers(self):
            voila_routes = [
                (route_, dashboard_page if handler is voila_page else handler, *rest)
                for route_, handler, *rest in super().init_handlers()
            ]
            # First: Voila's last route sends every other path to the notebook.
            return [_bundle_route(self.server_url, StaticFileHandler), *voila_routes]

    return HessvizVoila


def _bundle_route(base_url: str, handler: type) -> tuple:
    """The route that serves plotly's widget code at :data:`BUNDLE_ROUTE`, and only that file."""
    import plotly
    from jupyter_server.utils import url_path_join

    folder, name = os.path.split(BUNDLE_ROUTE)
    bundle_dir = os.path.join(os.path.dirname(plotly.__file__), "package_data")
    return url_path_join(base_url, folder, f"({re.escape(name)})"), handler, {"path": bundle_dir}


@functools.cache
def _page_handlers():
    """``(Voila's page handler, hessviz's)``: the same page, and a closed page ends its kernel.

    Closing the page sends Voila's kernel-shutdown beacon with the page's ``_xsrf`` cookie, but
    Voila 0.5.13 never sets that cookie, so the server refused the beacon (403, voila#1458) and
    every closed page left its kernel (~360 MB) running until the idle cull. This handler sets
    the cookie.
    """
    import inspect

    from voila.tornado.handler import TornadoVoilaHandler

    class DashboardPageHandler(TornadoVoilaHandler):
        async def prepare(self):
            prepared = super().prepare()
            if inspect.isawaitable(prepared):
                await prepared
            self.xsrf_token  # noqa: B018 - reading the token sets the _xsrf cookie

    return TornadoVoilaHandler, DashboardPageHandler


# hessviz.serve as a Jupyter server extension: what Binder runs. There Voila is itself an extension
# of the Jupyter server (pages at /voila/render/...), and this one, next to it, gives those pages
# what `python -m hessviz.serve` gives its own. tests/test_dashboard_binder.py serves it that way.


def _jupyter_server_extension_points():
    return [{"module": "hessviz.serve"}]


def _load_jupyter_server_extension(server_app) -> None:
    """Serve plotly's widget code at :data:`BUNDLE_ROUTE` and point the kernels at it."""
    from jupyter_server.base.handlers import FileFindHandler
    from jupyter_server.utils import url_path_join

    base_url = server_app.web_app.settings["base_url"]
    server_app.web_app.add_handlers(".*$", [_bundle_route(base_url, FileFindHandler)])
    os.environ[BUNDLE_ENV] = url_path_join(base_url, BUNDLE_ROUTE)  # before any kernel starts


async def _start_jupyter_server_extension(server_app) -> None:
    """Once every extension has added its routes: Voila's page handler becomes hessviz's."""
    web_app = server_app.web_app
    if not sum(map(_swap_page_handler, (web_app.default_router, web_app.wildcard_router))):
        server_app.log.warning(
            "hessviz.serve: no Voila page route found (is Voila's server extension enabled?); "
            "closed Voila pages keep their kernels until the idle cull"
        )


def _swap_page_handler(router) -> int:
    """Replace Voila's page handler by hessviz's in ``router``'s rules (nested routers too)."""
    voila_page, dashboard_page = _page_handlers()
    swapped = 0
    for rule in getattr(router, "rules", ()):
        if rule.target is voila_page:
            rule.target = dashboard_page
            swapped += 1
        else:
            swapped += _swap_page_handler(rule.target)
    return swapped


if __name__ == "__main__":
    main()
