"""A plotly ``FigureWidget`` whose 5 MB of browser code reaches each page once, not once per plot.

plotly's ``FigureWidget`` is an anywidget whose ES module (``_esm``) is plotly's whole widget
bundle. Every figure sends its own copy to the page, which compiles each one; with the explorer's
seven panels that is 35 MB per page view. anywidget also gives a module 2 s to load, and a figure
that misses it drops every later update (its panel freezes), which happened when several pages
opened at once on a small machine.

:class:`SharedFigureWidget` behaves exactly like ``go.FigureWidget`` in Python. Its ``_esm`` is a
small loader (``figure_widget.js``) that takes plotly's code from one :class:`PlotlyCode` widget
per kernel, imports it once per page, and replays any update that arrived while it was loading.
Works wherever anywidget does: Voila, JupyterLab, Notebook 7, Binder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import anywidget
import ipywidgets as widgets
import plotly
import plotly.graph_objects as go
import traitlets

#: plotly's FigureWidget ES module, as plotly itself ships it.
PLOTLY_WIDGET_MODULE = Path(plotly.__file__).parent / "package_data" / "widgetbundle.js"


class PlotlyCode(anywidget.AnyWidget):
    """plotly's FigureWidget module as bytes; never displayed, only referenced by figures.

    Attributes:
        source: the module's text (UTF-8), sent to the page once as a binary message.
        key: a digest of ``source``; the page caches the compiled module under it.
    """

    _esm = "export default {};"
    source = traitlets.Bytes().tag(sync=True)
    key = traitlets.Unicode().tag(sync=True)


_CODE: PlotlyCode | None = None


def plotly_code() -> PlotlyCode:
    """This kernel's one :class:`PlotlyCode` widget (made again if it was closed)."""
    global _CODE
    if _CODE is None or _CODE.comm is None:
        source = PLOTLY_WIDGET_MODULE.read_bytes()
        digest = hashlib.sha256(source).hexdigest()[:16]
        _CODE = PlotlyCode(source=source, key=f"plotly-{plotly.__version__}-{digest}")
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
