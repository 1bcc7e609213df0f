"""A notebook that displays a ``HessianExplorer`` keeps every panel in its saved widget state and
in its executed HTML export (with a static copy of every figure, for where widgets cannot render).

The dashboard (Voila) shows ``app.widget``, whose lower panels join once a page has drawn the
first plot; without a page (an executed notebook) they never joined, and an export held the first
panel only.
"""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from test_notebooks import NOTEBOOKS, kernel_env  # noqa: F401 - the fixture

from hessviz.widgets import HessianExplorer
from hessviz.widgets.panels import PANELS

DISPLAY = """\
import plotly.io as pio
from hessviz.widgets import HessianExplorer

pio.renderers.default = "plotly_mimetype+notebook"
app = HessianExplorer.from_query("act=softplus&layers=8,8")
app"""


def panels_shown(widget) -> list[str]:
    """The ``hv-fig-<name>`` panels inside ``widget``'s tree, in order."""
    found = [c[len("hv-fig-") :] for c in widget._dom_classes if c.startswith("hv-fig-")]
    for child in getattr(widget, "children", ()):
        found += panels_shown(child)
    return found


def test_the_dashboard_widget_waits_for_a_page_but_a_displayed_explorer_does_not(monkeypatch):
    app = HessianExplorer()
    assert panels_shown(app.widget) == ["hessian"]  # the dashboard's first view: one panel
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    app._ipython_display_()
    assert shown[0] is app.widget and panels_shown(app.widget) == list(PANELS)
    copy = shown[1].data
    assert "hv-static-copy" in copy and copy.count("Plotly.newPlot(") == len(PANELS)
    assert all(text.title.split(" · ")[1] in copy for text in PANELS.values())


@pytest.mark.notebooks
@pytest.mark.slow
def test_an_executed_notebooks_html_export_holds_every_panel(kernel_env):  # noqa: F811
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(DISPLAY)])
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if o.output_type == "error"], outputs
    # The saved widget state (what a widget-aware export renders): the panels' box holds all.
    state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    (grid,) = [m for m in state.values() if "hv-panels" in m["state"].get("_dom_classes", [])]
    assert len(grid["state"]["children"]) == len(PANELS)
    # The static copy, in the exported page: every panel's figure, drawn with Plotly.newPlot.
    html, _ = HTMLExporter().from_notebook_node(nb)
    start = html.index("hessviz explorer (a static copy)")
    assert html.count("Plotly.newPlot(", start) == len(PANELS)
    assert all(text.title.split(" · ")[1] in html[start:] for text in PANELS.values())
