"""PlotWidget's revisions and a page's "drawn" messages, and PlotPanel's replacement of a plot
whose page stopped taking its updates (anywidget drops a late model's messages:
``hessviz._shims``). The browser side of the same is in ``test_dashboard_browser.py``."""

from __future__ import annotations

import asyncio

import pytest

from hessviz import _shims
from hessviz.widgets.figure_widget import PlotPanel, PlotWidget


def _figure(z: float) -> dict:
    return {"data": [{"type": "heatmap", "z": [[z, 1.0], [1.0, z]]}], "layout": {}}


def _page_drew(plot: PlotWidget, revision: int, first: bool = False) -> None:
    """What the page's ``model.send({event: "drawn", revision, first})`` delivers."""
    plot._handle_custom_msg({"event": "drawn", "revision": revision, "first": first}, [])


def test_each_new_figure_is_a_new_revision_and_an_equal_one_is_not():
    plot = PlotWidget(_figure(0.0))
    assert plot.revision == 1 and plot.drawn == -1
    plot.figure = _figure(0.0)  # equal: nothing is sent, nothing to draw
    assert plot.revision == 1
    plot.figure = _figure(2.0)
    assert plot.revision == 2 and plot.spec["data"][0]["z"][0][0] == 2.0


def test_drawn_messages_record_the_latest_revision_and_first_draws_call_on_drawn():
    plot = PlotWidget(_figure(0.0))
    calls = []
    plot.on_drawn(lambda: calls.append(1))
    _page_drew(plot, 1, first=True)
    assert plot.drawn == 1 and calls == [1]
    plot.figure = _figure(3.0)
    _page_drew(plot, 2)  # a later draw: not a first one
    _page_drew(plot, 1)  # a late message about an older figure: drawn stays at 2
    assert plot.drawn == 2 and calls == [1]
    for bad in ({"event": "drawn"}, {"event": "drawn", "revision": "2"}, {"event": "other"}, 7):
        plot._handle_custom_msg(bad, [])  # messages of another shape change nothing
    assert plot.drawn == 2 and calls == [1]


def _panel_in_a_loop(deadline: float, steps) -> PlotPanel:
    """Run ``steps(panel)`` (a coroutine function) in an event loop, as a kernel would."""
    panel = PlotPanel("hessian")
    panel.REDRAW_DEADLINE_S = deadline
    asyncio.run(steps(panel))
    return panel


def test_a_plot_whose_page_did_not_draw_the_new_figure_is_replaced(monkeypatch):
    monkeypatch.setattr(_shims, "anywidget_drops_updates", lambda: True)
    calls = []

    async def steps(panel):
        panel.on_drawn(lambda: calls.append("drawn"))
        panel.show(_figure(0.0), key="a")
        _page_drew(panel.plot, panel.plot.revision, first=True)
        old = panel.plot
        panel.show(_figure(5.0), key="b")  # the page never draws this one
        await asyncio.sleep(0.2)
        assert panel.replaced == 1 and panel.plot is not old
        assert old.comm is None  # closed
        assert panel.box.children == (panel.plot,)
        assert panel.plot.spec == old.spec and panel.plot.config == old.config
        assert "hv-figure" in panel.plot._dom_classes
        assert panel.rendered_key == "b"
        _page_drew(panel.plot, panel.plot.revision, first=True)  # the new model's first draw
        assert calls == ["drawn", "drawn"]  # on_drawn moved to the new plot

    _panel_in_a_loop(0.05, steps)


def test_a_page_that_draws_in_time_keeps_its_plot(monkeypatch):
    monkeypatch.setattr(_shims, "anywidget_drops_updates", lambda: True)

    async def steps(panel):
        panel.show(_figure(0.0))
        _page_drew(panel.plot, panel.plot.revision, first=True)
        plot = panel.plot
        for z in (1.0, 2.0, 3.0):  # quick changes: only the last one needs drawing
            panel.show(_figure(z))
        await asyncio.sleep(0.02)
        _page_drew(plot, plot.revision)
        await asyncio.sleep(0.2)
        assert panel.plot is plot and panel.replaced == 0

    _panel_in_a_loop(0.1, steps)


@pytest.mark.parametrize("why", ["no page drew it", "anywidget keeps updates", "no event loop"])
def test_no_replacement_without_a_page_a_bug_or_a_loop(why, monkeypatch):
    monkeypatch.setattr(_shims, "anywidget_drops_updates", lambda: why != "anywidget keeps updates")
    if why == "no event loop":  # a script or a test: show() returns, nothing is scheduled
        panel = PlotPanel("hessian")
        panel.show(_figure(0.0))
        _page_drew(panel.plot, panel.plot.revision, first=True)
        panel.show(_figure(1.0))
        assert panel.replaced == 0
        return

    async def steps(panel):
        panel.show(_figure(0.0))
        if why != "no page drew it":
            _page_drew(panel.plot, panel.plot.revision, first=True)
        panel.show(_figure(1.0))
        await asyncio.sleep(0.2)
        assert panel.replaced == 0

    _panel_in_a_loop(0.05, steps)
