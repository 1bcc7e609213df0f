"""The interactive explorer (ipywidgets + plotly FigureWidgets); not imported by ``hessviz``.

Example (a notebook or Voila dashboard)::

    import os
    from hessviz.widgets import HessianExplorer

    app = HessianExplorer.from_query(os.environ.get("QUERY_STRING", ""))
    display(app.widget)
    app.link()  # share this view

Modules: :mod:`~hessviz.widgets.state` (the view as a dataclass ⇄ query string),
:mod:`~hessviz.widgets.compute` (engine calls, memoised per stage; no widgets),
:mod:`~hessviz.widgets.display` (FigureWidget updates and the sync before display),
:mod:`~hessviz.widgets.figure_widget` (a plot widget: the figure is its state, drawn with
``Plotly.react``; plotly.js reaches a page once),
:mod:`~hessviz.widgets.errors` (the one error wrapper), :mod:`~hessviz.widgets.explorer`.
"""

from .compute import Pipeline, ViewResults
from .display import FigurePanel, sync_for_display
from .errors import ErrorGuard, friendly_message
from .explorer import PANELS, HessianExplorer
from .figure_widget import PlotPanel, PlotWidget, SharedFigureWidget
from .state import ExplorerState, hessian_methods

__all__ = [
    "HessianExplorer",
    "ExplorerState",
    "PANELS",
    "Pipeline",
    "ViewResults",
    "FigurePanel",
    "PlotWidget",
    "PlotPanel",
    "SharedFigureWidget",
    "sync_for_display",
    "ErrorGuard",
    "friendly_message",
    "hessian_methods",
]
