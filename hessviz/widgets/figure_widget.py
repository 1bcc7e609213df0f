"""A plot widget whose state is the figure: anywidget + plotly.js's public ``Plotly.react``.

:class:`PlotWidget` holds a plotly figure as plain JSON state (``spec`` = ``{"data", "layout"}``
and ``config``, synced traitlets); its browser side (``figure_widget.js``) draws that state with
``Plotly.react`` whenever it changes, and follows its container's width with a
``ResizeObserver``. Nothing is replayed and nothing needs syncing before display: a page that
shows the widget later, or inside any container, draws the current state. A page draws its plots'
first figures one at a time, those on screen first, each once it is laid out at its width (one
layout by plotly.js instead of two), so the first plot is on screen before the others are drawn;
after each draw a plot tells the kernel which figure it drew (its ``revision``; a view's first
draw also calls :meth:`PlotWidget.on_drawn`'s callbacks).

plotly.js reaches a page once, whatever the number of plots: every plot points to this kernel's
one :class:`PlotlyJS` widget, which names a URL where the server serves it (``hessviz.serve`` and
its Jupyter server extension do) or else carries the code itself, sent once through the kernel.
That code is plotly.js's official cartesian bundle (1.5 MB: scatter, bar, heatmap, contour…)
where ``./dev`` or ``binder/postBuild`` installed it, else plotly.py's full one (4.8 MB), see
:mod:`hessviz._plotly_bundle`; a figure with a trace type the page's bundle lacks is refused
with a message rather than drawn blank. Works wherever anywidget does: Voila, JupyterLab,
Notebook 7, Binder.

:class:`PlotPanel` is one explorer panel: a PlotWidget in a box with a stable CSS class, replaced
by a fresh one where a page drew it before but stopped taking its updates (anywidget gives up on
a model whose module loaded late: :mod:`hessviz._shims`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import anywidget
import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import traitlets

from .. import _plotly_bundle, _shims
from ..serve import PLOTLY_JS_ENV, plotly_js_file, plotly_js_version

#: The plotly.js file pages get (the cartesian bundle if installed, else plotly.py's full one).
PLOTLY_JS = plotly_js_file()
#: Options every plot gets unless its ``config`` says otherwise.
DEFAULT_CONFIG = {"responsive": True, "displaylogo": False}


class PlotlyJS(anywidget.AnyWidget):
    """Where a page gets plotly.js; never displayed, only referenced by plots.

    Attributes:
        url: plotly.js's path on the server that serves the page, or ``""``; the browser then
            fetches and caches it like any script.
        source: without ``url``, the code itself (UTF-8), sent to the page once.
        key: ``"plotly.js-<version>"``; a page loads each key once.
    """

    _esm = "export default {};"
    url = traitlets.Unicode().tag(sync=True)
    source = traitlets.Bytes().tag(sync=True)
    key = traitlets.Unicode().tag(sync=True)


_PLOTLY_JS: PlotlyJS | None = None


def plotly_js() -> PlotlyJS:
    """This kernel's one :class:`PlotlyJS` widget (made again if it was closed).

    In a kernel of a server that serves plotly.js (``hessviz.serve``, or a Jupyter server with
    its extension), the environment variable :data:`hessviz.serve.PLOTLY_JS_ENV` holds its path
    and the widget names it; anywhere else the widget carries the code.
    """
    global _PLOTLY_JS
    if _PLOTLY_JS is None or _PLOTLY_JS.comm is None:
        url = os.environ.get(PLOTLY_JS_ENV, "")
        key = f"plotly.js-{plotly_js_version()}"
        _PLOTLY_JS = PlotlyJS(url=url, source=b"" if url else PLOTLY_JS.read_bytes(), key=key)
    return _PLOTLY_JS


def figure_json(figure: go.Figure | Mapping) -> dict:
    """``{"data": [...], "layout": {...}}`` as plain JSON values (lists, numbers, ``None``).

    Accepts a ``go.Figure`` or a figure dict (numpy arrays allowed). Arrays become nested lists
    and NaN/inf become ``None`` (a gap for plotly.js), so the browser's ``gd.data`` holds plain
    arrays.

    Example:
        >>> figure_json({"data": [{"type": "heatmap", "z": np.array([[1.0, np.nan]])}]})
        {'data': [{'type': 'heatmap', 'z': [[1.0, None]]}], 'layout': {}}
        >>> figure_json(go.Figure(go.Bar(y=np.arange(3))))["data"][0]["y"]
        [0, 1, 2]
    """
    spec = figure.to_plotly_json() if isinstance(figure, go.Figure) else figure
    spec = {"data": list(spec.get("data") or []), "layout": dict(spec.get("layout") or {})}
    return json.loads(pio.to_json(_decode_typed_arrays(spec), validate=False, engine="json"))


def check_trace_types(spec: Mapping) -> None:
    """Refuse a figure that the page's plotly.js would leave blank (a trace type it lacks).

    Example:
        >>> check_trace_types({"data": [{"type": "heatmap"}, {"y": [1, 2]}]})  # scatter
        >>> "scatter" in _plotly_bundle.trace_types(PLOTLY_JS)
        True
    """
    known = _plotly_bundle.trace_types(PLOTLY_JS)
    missing = {trace.get("type", "scatter") for trace in spec.get("data", [])} - known
    if missing:
        raise ValueError(
            f"PlotWidget: trace type(s) {', '.join(sorted(missing))} are not in the plotly.js "
            f"this environment serves ({PLOTLY_JS.name}: {', '.join(sorted(known))}); set "
            f"{_plotly_bundle.BUNDLE_ENV}=full for the server and kernel to serve plotly.py's "
            "full bundle, or use go.FigureWidget"
        )


def _decode_typed_arrays(value):
    """plotly ≥ 6 writes numpy arrays as ``{"dtype", "bdata", "shape"}``; give back the arrays."""
    if isinstance(value, Mapping):
        if "bdata" in value and "dtype" in value:
            array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
            shape = value.get("shape")
            if shape:
                array = array.reshape([int(n) for n in str(shape).split(",")])
            return array
        return {k: _decode_typed_arrays(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decode_typed_arrays(v) for v in value]
    return value


class PlotWidget(anywidget.AnyWidget):
    """A plotly figure as widget state, drawn in the browser with ``Plotly.react``.

    Args:
        figure: a ``go.Figure`` or a figure dict (``{"data": [...], "layout": {...}}``).
        config: plotly.js options (merged over :data:`DEFAULT_CONFIG`).

    Attributes:
        spec: the figure as plain JSON (synced); set :attr:`figure` rather than this.
        config: plotly.js's options (synced).
        revision: counts the figures set (synced with ``spec``, in the same message).
        drawn: the latest revision a page said it drew (-1: none yet).

    Example:
        >>> plot = PlotWidget({"data": [{"type": "heatmap", "z": [[1, 2], [3, 4]]}]})
        >>> plot.spec["data"][0]["z"], plot.figure.data[0].type
        ([[1, 2], [3, 4]], 'heatmap')
        >>> plot.figure = {"data": [{"type": "heatmap", "z": [[1, 2], [3, 5]]}]}
        >>> plot.spec["data"][0]["z"][1]
        [3, 5]
        >>> plot._plotly is plotly_js() and len(plot.get_state()["_esm"]) < 10_000
        True
    """

    _esm = Path(__file__).with_name("figure_widget.js")
    spec = traitlets.Dict().tag(sync=True)
    config = traitlets.Dict().tag(sync=True)
    revision = traitlets.Int(0).tag(sync=True)
    _plotly = traitlets.Instance(PlotlyJS).tag(sync=True, **widgets.widget_serialization)
    _plotly_key = traitlets.Unicode().tag(sync=True)

    # Defaults, not constructor arguments: they are in the state the widget opens with.
    @traitlets.default("_plotly")
    def _default_plotly(self) -> PlotlyJS:
        return plotly_js()

    @traitlets.default("_plotly_key")
    def _default_plotly_key(self) -> str:
        return self._plotly.key

    @traitlets.default("config")
    def _default_config(self) -> dict:
        return dict(DEFAULT_CONFIG)

    def __init__(
        self, figure: go.Figure | Mapping | None = None, *, config: Mapping | None = None, **kw
    ) -> None:
        super().__init__(**kw)
        self._figure: go.Figure | Mapping = {"data": [], "layout": {}}
        self.drawn = -1
        self.on_msg(self._on_drawn_message)
        if config is not None:
            self.config = {**DEFAULT_CONFIG, **config}
        if figure is not None:
            self.figure = figure

    @property
    def figure(self) -> go.Figure:
        """The figure on display, as a new ``go.Figure`` (numpy arrays as they were given)."""
        return go.Figure(self._figure)

    @figure.setter
    def figure(self, figure: go.Figure | Mapping) -> None:
        spec = figure_json(figure)
        check_trace_types(spec)
        self._figure = figure
        if spec != self.spec:  # an equal spec sends nothing, and needs no new revision
            with self.hold_sync():  # one message: a page reads both together
                self.spec = spec
                self.revision += 1

    def to_plotly_json(self) -> dict:
        """The figure on display as a dict, like ``go.Figure.to_plotly_json``."""
        return self.figure.to_plotly_json()

    def on_drawn(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` whenever a page has drawn this plot for the first time (once per
        view; never where no page shows it, e.g. in tests or an executed HTML export)."""

        def handle(_widget, content, _buffers) -> None:
            if _drawn_revision(content) is not None and content.get("first"):
                callback()

        self.on_msg(handle)

    def _on_drawn_message(self, _widget, content, _buffers) -> None:
        revision = _drawn_revision(content)
        if revision is not None:
            self.drawn = max(self.drawn, revision)


def _drawn_revision(content: object) -> int | None:
    """The revision a page's ``{"event": "drawn", "revision": …}`` message reports, else None."""
    if not (isinstance(content, Mapping) and content.get("event") == "drawn"):
        return None
    revision = content.get("revision")
    return revision if isinstance(revision, int) and not isinstance(revision, bool) else None


class PlotPanel:
    """One explorer panel: a :class:`PlotWidget` in a box with the CSS class ``hv-fig-<name>``.

    Where anywidget drops a late model's updates (:func:`hessviz._shims.anywidget_drops_updates`:
    a page too busy to load the plot's module within two seconds), a plot that a page has drawn
    before but that has not drawn the figure :meth:`show` sent :data:`REDRAW_DEADLINE_S` seconds
    ago is replaced by a fresh one showing it (the page makes a new model for it).

    Attributes:
        name: the panel's name (``"hessian"``, ``"layers"``, …).
        box: the container to place in a layout; its only child is :attr:`plot`.
        plot: the :class:`PlotWidget` (CSS class ``hv-figure``).
        spec: the figure spec it shows (as given to :meth:`show`).
        rendered_key: what the caller said the spec shows (lets it skip identical redraws).
        replaced: how many plots were put in place of one whose page stopped updating it.
    """

    #: seconds a page may take to draw a figure :meth:`show` sent, once it has drawn this plot
    REDRAW_DEADLINE_S = 5.0

    def __init__(self, name: str, config: Mapping | None = None) -> None:
        self.name = name
        self.plot = self._new_plot(None, config)
        self.box = widgets.VBox([self.plot], layout=widgets.Layout(width="100%"))
        self.box.add_class(f"hv-fig-{name}")
        self.spec: dict = {"data": [], "layout": {}}
        self.rendered_key: object = None
        self.replaced = 0
        self._on_drawn: list[Callable[[], object]] = []

    @staticmethod
    def _new_plot(figure, config: Mapping | None) -> PlotWidget:
        plot = PlotWidget(figure, config=config)
        plot.add_class("hv-figure")
        return plot

    @property
    def figure(self) -> go.Figure:
        """The figure on display (a ``go.Figure``: read ``.data[0].z``, ``.layout``…)."""
        return self.plot.figure

    def show(self, figure_spec: go.Figure | Mapping, key: object = None) -> None:
        """Display a figure spec; ``key`` records what it shows."""
        self.plot.figure = figure_spec
        self.spec = figure_spec
        self.rendered_key = key
        self._expect_drawn()

    def on_drawn(self, callback: Callable[[], object]) -> None:
        """:meth:`PlotWidget.on_drawn` of this panel's plot, and of any plot put in its place."""
        self._on_drawn.append(callback)
        self.plot.on_drawn(callback)

    def sync(self) -> None:
        """Nothing to do: the widget's state is the figure (kept for the old FigurePanel API)."""

    def _expect_drawn(self) -> None:
        """Check in :data:`REDRAW_DEADLINE_S` that a page drew the figure just sent, where a page
        drew this plot before and the kernel runs an event loop (it does under Voila and
        Jupyter: the control that changed arrived through it)."""
        plot = self.plot
        if plot.drawn < 0 or plot.drawn >= plot.revision or not _shims.anywidget_drops_updates():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: no page either
            return
        loop.call_later(self.REDRAW_DEADLINE_S, self._check_drawn, plot, plot.revision)

    def _check_drawn(self, plot: PlotWidget, revision: int) -> None:
        if plot is self.plot and plot.revision == revision and plot.drawn < revision:
            self.replace_plot()

    def replace_plot(self) -> None:
        """Put a fresh :class:`PlotWidget` showing the current figure in place of :attr:`plot`
        (which is closed): a page makes a new model for it, and draws it."""
        old = self.plot
        self.plot = self._new_plot(self.spec, old.config)
        for callback in self._on_drawn:
            self.plot.on_drawn(callback)
        self.box.children = (self.plot,)
        self.replaced += 1
        old.close()
