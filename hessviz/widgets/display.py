"""Where the explorer's plots live: one :class:`~hessviz.widgets.figure_widget.PlotPanel` each.

A ``PlotPanel`` holds its figure as widget state and draws it with plotly.js's public
``Plotly.react``, following its container's width; nothing is synced before display, replayed or
nudged. This module is the one place the explorer makes panels, and where both explorers write
the static copy of their figures that executed HTML exports show.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Mapping

import plotly.graph_objects as go
import plotly.io as pio

from .figure_widget import PlotPanel

#: The explorer's panel type (the name the explorer's modules used before ``PlotPanel``).
FigurePanel = PlotPanel


def make_panel(name: str) -> PlotPanel:
    """The panel ``name`` is drawn in (CSS class ``hv-fig-<name>``).

    It has ``box`` (the widget to lay out), ``figure`` (the ``go.Figure`` on display), ``spec``,
    ``rendered_key`` and ``show(spec, key)``.
    """
    return PlotPanel(name)


def static_figure_html(figure: go.Figure, div_id: str) -> str:
    """A ``<div>`` and the script that draws ``figure`` in it with ``Plotly.newPlot``.

    If plotly.js is not on the page yet (it may be embedded further down, as nbconvert exports
    place it with a notebook's first plotly figure), the plot is drawn once the page has loaded.
    """
    spec = pio.to_json(figure, validate=False).replace("</", "<\\/")
    height = int(figure.layout.height or 450)
    return (
        f'<div id="{div_id}" style="width:100%;height:{height}px"></div>'
        '<script type="text/javascript">(function () {'
        f"var spec = {spec};"
        f'function draw() {{ Plotly.newPlot("{div_id}", spec.data, spec.layout, '
        '{"responsive": true, "displaylogo": false}); }'
        'if (window.Plotly) { draw(); } else { window.addEventListener("load", draw); }'
        "})();</script>"
    )


def static_copy_html(status: str, figures: Mapping[str, go.Figure]) -> str:
    """A static copy of an explorer: its status line, then each figure under its title
    (``figures``: title → figure), drawn with ``Plotly.newPlot`` (see :func:`static_figure_html`).

    Class ``hv-static-copy``: the live explorer's style sheet hides it, so it shows only where the
    widget cannot render (an executed notebook exported to HTML, opened offline).
    """
    parts = [
        "<div class='hv-static-copy'>",
        f"<p><b>hessviz explorer (a static copy):</b> {html.escape(status)}</p>",
    ]
    for title, figure in figures.items():
        parts.append(f"<h4>{html.escape(title)}</h4>")
        parts.append(static_figure_html(figure, f"hv-static-{uuid.uuid4().hex}"))
    parts.append("</div>")
    return "\n".join(parts)


class WithStaticCopy:
    """Displayed as itself (a cell's last line, ``display(app)``): the live widget, then a static
    copy of its figures (:func:`static_copy_html`) as a second output. The live widget's style
    sheet hides the copy; where the widget cannot render — an executed notebook exported to HTML,
    opened offline — the copy shows the figures instead.

    The explorers give ``widget``, :meth:`_static_parts` and, if they need one, a
    :meth:`_before_display` step.
    """

    def _static_parts(self) -> tuple[str, Mapping[str, go.Figure]]:
        """The status line, and the figures on screen by title."""
        raise NotImplementedError

    def _before_display(self) -> None:
        """What to do before the widget is displayed (nothing by default)."""

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display

        self._before_display()
        display(self.widget)
        display(HTML(self.static_html()))

    def static_html(self) -> str:
        """The status line and every figure on screen as HTML drawn with ``Plotly.newPlot``.

        Draws with the plotly.js on the page, wherever it is embedded (a notebook that sets
        ``plotly.io.renderers.default = "plotly_mimetype+notebook"`` embeds it once, with its
        first figure): each plot waits for the page to load if plotly.js is not there yet.
        """
        return static_copy_html(*self._static_parts())
