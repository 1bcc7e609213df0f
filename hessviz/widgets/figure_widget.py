"""A plotly ``FigureWidget`` whose 5 MB of browser code reaches each page once, not once per plot.

plotly's ``FigureWidget`` is an anywidget whose ES module (``_esm``) is plotly's whole widget
bundle. Every figure sends its own copy to the page, which compiles each one; with the explorer's
seven panels that is 35 MB per page view. anywidget also gives a module 2 s to load, and a figure
that misses it drops every later update (its panel freezes), which happened when several pages
opened at once on a small machine.

:class:`SharedFigureWidget` behaves exactly like ``go.FigureWidget`` in Python. Its ``_esm`` is a
small loader (``figure_widget.js``) that takes plotly's code from one :class:`PlotlyCode` widget
per kernel, imports it once per page, and replays any update that arrived while it was loading.
Works wherever anywidget does: Voila, JupyterLab, Notebook 7, Binder. Under ``hessviz.serve`` the
code comes from the server's URL for it (cached by the browser); elsewhere through the kernel.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anywidget
import ipywidgets as widgets
import plotly
import plotly.graph_objects as go
import traitlets

from ..serve import BUNDLE_ENV

#: plotly's FigureWidget ES module, as plotly itself ships it.
PLOTLY_WIDGET_MODULE = Path(plotly.__file__).parent / "package_data" / "widgetbundle.js"


class PlotlyCode(anywidget.AnyWidget):
    """Where a page gets plotly's FigureWidget module; never displayed, only referenced by figures.

    Attributes:
        url: the module's path on the server that serves the page (``hessviz.serve`` serves it),
            or ``""``; the browser then fetches and caches it like any script.
        source: without ``url``, the module's text (UTF-8), sent to the page once as a binary
            message.
        key: a digest of the module; the page caches the loaded module under it.
    """

    _esm = "export default {};"
    url = traitlets.Unicode().tag(sync=True)
    source = traitlets.Bytes().tag(sync=True)
    key = traitlets.Unicode().tag(sync=True)


_CODE: PlotlyCode | None = None


def plotly_code() -> PlotlyCode:
    """This kernel's one :class:`PlotlyCode` widget (made again if it was closed).

    In a kernel of ``hessviz.serve`` it names the server's copy of the module (its path is in
    the environment variable :data:`hessviz.serve.BUNDLE_ENV`); anywhere else it carries the
    module itself.
    """
    global _CODE
    if _CODE is None or _CODE.comm is None:
        module = PLOTLY_WIDGET_MODULE.read_bytes()
        key = f"plotly-{plotly.__version__}-{hashlib.sha256(module).hexdigest()[:16]}"
        url = os.environ.get(BUNDLE_ENV, "")
        _CODE = PlotlyCode(url=url, source=b"" if url else module, key=key)
    return _CODE


class SharedFigureWidget(go.FigureWidget):
    """``go.FigureWidget`` that loads plotly's browser code from :func:`plotly_code`.

    Same constructor, properties and update methods as ``go.FigureWidget``.

    Example:
        >>> fig = SharedFigureWidget(data=[{"type": "heatmap", "z": [[1, 2], [3, 4]]}])
        >>> fig._hv_code is plotly_code(), fig.data[0].type
        (True, 'heatmap')
        >>> len(fig.get_state()["_esm"]) < 10_000  # the loader, not the 5 MB bundle
        True
    """

    _esm = Path(__file__).with_name("figure_widget.js")
    _hv_code = traitlets.Instance(PlotlyCode).tag(sync=True, **widgets.widget_serialization)
    _hv_code_key = traitlets.Unicode().tag(sync=True)

    # Defaults, not constructor arguments: they must be in the state the widget opens with,
    # because the page's loader reads them the moment the model is created.
    @traitlets.default("_hv_code")
    def _default_code(self) -> PlotlyCode:
        return plotly_code()

    @traitlets.default("_hv_code_key")
    def _default_code_key(self) -> str:
        return self._hv_code.key
