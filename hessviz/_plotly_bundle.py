"""Which plotly.js the dashboard's pages load: plotly.js's official cartesian bundle, if installed.

plotly.py ships the whole of plotly.js (``package_data/plotly.min.js``, 4.8 MB, every trace type).
hessviz's figures draw only ``scatter``, ``heatmap``, ``contour`` and ``bar`` traces, which
plotly.js's official partial bundle ``plotly.js-cartesian-dist-min`` (from npm, 1.5 MB) holds: a
page shows its first heatmap 0.7–1.1 s sooner on a busy 2-core machine. ``./dev`` and
``binder/postBuild`` fetch it into the environment (``scripts/fetch_plotly_js.py``: ``npm pack``,
then :func:`install`), at exactly the plotly.js version plotly.py ships; without npm, or at any
other version, pages get plotly.py's full bundle, with no error.

``HESSVIZ_PLOTLY_JS=full`` in the environment of the server and its kernels makes them use the
full bundle anyway (for :class:`~hessviz.widgets.PlotWidget` figures with other trace types, such
as ``surface``, which the cartesian bundle would leave blank: the widget refuses those figures
with a message that says so). ``tests/test_plotly_bundle.py`` checks that every figure the
explorers draw uses trace types the cartesian bundle registers, read from the bundle itself.

Importing this module imports neither plotly nor anything outside the standard library (the server
uses it; it does not import plotly).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import sys
from pathlib import Path

#: The npm package of plotly.js's official cartesian partial bundle, and its file in the package.
PACKAGE = "plotly.js-cartesian-dist-min"
PACKAGE_FILE = "package/plotly-cartesian.min.js"
#: The trace types the cartesian bundle registers (its README's list): tests read them from the
#: installed file too, and check every figure hessviz draws against them.
CARTESIAN_TRACES = frozenset(
    "bar box contour heatmap histogram histogram2d histogram2dcontour image pie scatter "
    "scatterternary violin".split()
)
#: Set to ``full``: serve plotly.py's whole plotly.js even where the cartesian bundle is installed.
BUNDLE_ENV = "HESSVIZ_PLOTLY_JS"
#: plotly.js as plotly.py ships it (the same file its offline HTML export embeds).
FULL_FILE = ("package_data", "plotly.min.js")
_VERSION = re.compile(r"\* plotly\.js (?:\(([a-z -]+)\) )?v(\d+\.\d+\.\d+\S*)")
_TRACE = re.compile(rb'moduleType:"trace",name:"([a-z0-9]+)"')


def full_bundle() -> Path:
    """plotly.py's copy of plotly.js, found without importing plotly."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise SystemExit("hessviz: plotly is not installed (pip install 'hessviz[explorer]')")
    return Path(spec.origin).parent.joinpath(*FULL_FILE)


def header(path: Path) -> tuple[str, str]:
    """``(variant, version)`` from a plotly.js bundle's first comment: ``("", "4.1.1")`` for the
    full bundle, ``("cartesian - minified", "4.1.1")`` for the cartesian one."""
    with path.open(encoding="utf-8") as f:
        match = _VERSION.search(f.read(300))
    if match is None:
        raise ValueError(f"hessviz: {path} does not start with a plotly.js header comment")
    return match.group(1) or "", match.group(2)


@functools.cache
def full_version() -> str:
    """The version of plotly.py's plotly.js (e.g. ``"4.1.1"``): the only one hessviz serves."""
    return header(full_bundle())[1]


def cartesian_path(prefix: str | os.PathLike | None = None) -> Path:
    """Where the cartesian bundle of :func:`full_version` lives in the environment ``prefix``
    (default: this one, ``sys.prefix``): ``share/hessviz/plotly-cartesian-<version>.min.js``."""
    root = Path(sys.prefix if prefix is None else prefix)
    return root / "share" / "hessviz" / f"plotly-cartesian-{full_version()}.min.js"


def cartesian_bundle(prefix: str | os.PathLike | None = None) -> Path | None:
    """The installed cartesian bundle, if it is there and is plotly.py's plotly.js version."""
    path = cartesian_path(prefix)
    return path if _is_cartesian(path) else None


def bundle() -> Path:
    """The plotly.js file pages get: the cartesian bundle when installed (and not switched off
    with ``HESSVIZ_PLOTLY_JS=full``), else plotly.py's full one."""
    if os.environ.get(BUNDLE_ENV, "").strip().lower() != "full":
        cartesian = cartesian_bundle()
        if cartesian is not None:
            return cartesian
    return full_bundle()


def served_name(path: Path) -> str:
    """A file name that says what ``path`` holds: ``plotly-cartesian-4.1.1.min.js`` or
    ``plotly-4.1.1.min.js`` (a browser may cache a file under it for good)."""
    variant, version = header(path)
    return f"plotly-{'cartesian-' if variant.startswith('cartesian') else ''}{version}.min.js"


@functools.cache
def trace_types(path: Path) -> frozenset[str]:
    """The trace types a plotly.js bundle registers, read from the bundle's code."""
    return frozenset(name.decode() for name in _TRACE.findall(path.read_bytes()))


def install(code: bytes, prefix: str | os.PathLike | None = None) -> Path | None:
    """Install ``code`` as the cartesian bundle of the environment ``prefix`` (default: this
    one), if it is plotly.js's cartesian bundle at exactly :func:`full_version`; else ``None``.

    ``scripts/fetch_plotly_js.py`` (run by ``./dev`` and ``binder/postBuild``) gets the code
    from npm; this package itself never starts a process.
    """
    target = cartesian_path(prefix)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(target.name + ".partial")
    staged.write_bytes(code)
    if not _is_cartesian(staged):
        staged.unlink()
        return None
    os.replace(staged, target)  # never a half-written bundle under the final name
    return target


def _is_cartesian(path: Path) -> bool:
    """Whether ``path`` is plotly.js's cartesian bundle at exactly :func:`full_version`."""
    try:
        variant, version = header(path)
    except (OSError, ValueError):
        return False
    return variant.startswith("cartesian") and version == full_version()
