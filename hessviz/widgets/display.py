"""Where the explorer's plots live: one :class:`~hessviz.widgets.figure_widget.PlotPanel` each.

A ``PlotPanel`` holds its figure as widget state and draws it with plotly.js's public
``Plotly.react``, following its container's width; nothing is synced before display, replayed or
nudged. This module is the one place the explorer makes panels.
"""

from __future__ import annotations

from .figure_widget import PlotPanel

#: The explorer's panel type (the name the explorer's modules used before ``PlotPanel``).
FigurePanel = PlotPanel


def make_panel(name: str) -> PlotPanel:
    """The panel ``name`` is drawn in (CSS class ``hv-fig-<name>``).

    It has ``box`` (the widget to lay out), ``figure`` (the ``go.Figure`` on display), ``spec``,
    ``rendered_key`` and ``show(spec, key)``.
    """
    return PlotPanel(name)
