"""The interactive explorer (ipywidgets + plotly FigureWidgets); not imported by ``hessviz``.

Example (a notebook or Voila dashboard)::

    import os
    from hessviz.widgets import HessianExplorer

    app = HessianExplorer.from_query(os.environ.get("QUERY_STRING", ""))
    display(app.widget)
    app.link()  # share this view

Modules: :mod:`~hessviz.widgets.state` (the view as a dataclass ⇄ query string),
:mod:`~hessviz.widgets.compute` (engine calls, memoised per stage; no widgets),
:mod:`~hessviz.widgets.display` (where the explorer makes its plot panels),
:mod:`~hessviz.widgets.figure_widget` (a plot widget: the figure is its state, drawn with
``Plotly.react``; plotly.js reaches a page once),
:mod:`~hessviz.widgets.errors` (the one error wrapper), :mod:`~hessviz.widgets.controls`
(the controls, their tooltips and CSS classes), :mod:`~hessviz.widgets.panels` (titles, captions,
redraws), :mod:`~hessviz.widgets.race` (the method race), :mod:`~hessviz.widgets.lessons`
(presets that say what to look at), :mod:`~hessviz.widgets.explorer` (wiring and layout),
:mod:`~hessviz.widgets.model_explorer` and :mod:`~hessviz.widgets.model_compute` (the explorer of
a user's own model: ``HessianExplorer.for_model(model, x)``). The
numbers the panels read (verdict, Taylor model, FD noise floor and error reading, layer shares)
come from :mod:`hessviz.analysis`.
"""

from .compute import Pipeline, ViewResults
from .display import FigurePanel
from .errors import ErrorGuard, friendly_message
from .explorer import PANELS, HessianExplorer
from .figure_widget import PlotPanel, PlotWidget
from .lessons import LESSONS, Lesson
from .model_explorer import MODEL_PANELS, ModelExplorer
from .state import ExplorerState, hessian_methods

__all__ = [
    "HessianExplorer",
    "ModelExplorer",
    "MODEL_PANELS",
    "ExplorerState",
    "PANELS",
    "LESSONS",
    "Lesson",
    "Pipeline",
    "ViewResults",
    "FigurePanel",
    "PlotWidget",
    "PlotPanel",
    "ErrorGuard",
    "friendly_message",
    "hessian_methods",
]
