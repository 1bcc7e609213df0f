"""Long-lived ``FigureWidget``s: in-place updates, and the one place they are synced for display.

Plotly ≥ 6 builds ``FigureWidget`` on anywidget. Changes made after construction travel to the
browser as one-off messages, and a page that displays the widget later never receives them: a
FigureWidget inside an HBox/VBox then shows empty axes in Voila (plotly.py#4998).
:func:`sync_for_display` writes the figure's current state into the synced traits; the explorer
calls it (through :meth:`FigurePanel.sync`) on every figure whenever its root widget is handed out
for display. That is the only place the workaround lives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anywidget
import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from .figure_widget import SharedFigureWidget


def sync_for_display(figure: go.FigureWidget) -> None:
    """Make a FigureWidget's synced state equal to its current figure (the Voila empty-plot fix).

    Equivalent to what ``FigureWidget._repr_mimebundle_`` does before a cell displays it; needed
    because a FigureWidget nested in a container is displayed without that call.
    """
    figure._repr_mimebundle_()


class ResizeNudge(anywidget.AnyWidget):
    """An invisible widget that fires a window ``resize`` event shortly after it is shown.

    A FigureWidget draws itself before the page has laid it out, so it cannot see its container's
    width and falls back to plotly's default 700 px; it does listen to window resizes. Shown next
    to the figures, this nudge makes every plot fill its panel's width.
    """

    _esm = """
    export default {
      render({ el }) {
        el.style.display = "none";
        for (const ms of [200, 1000, 3000]) {
          setTimeout(() => {
            window.__hessvizResizeNudges = (window.__hessvizResizeNudges || 0) + 1;
            window.dispatchEvent(new Event("resize"));
          }, ms);
        }
      }
    };
    """


def same_values(a: object, b: object) -> bool:
    """Deep equality for plotly property values (numpy arrays, nested dicts, lists, scalars).

    Example:
        >>> same_values({"z": np.array([[1.0, np.nan]])}, {"z": np.array([[1.0, np.nan]])})
        True
        >>> same_values([1, 2], (1, 2)), same_values({"a": 1}, {"a": 1, "b": 2})
        (True, False)
    """
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        left, right = np.asarray(a), np.asarray(b)
        if left.shape != right.shape:
            return False
        if np.array_equal(left, right):
            return True
        if left.dtype.kind == "f" and right.dtype.kind == "f":  # NaN gaps compare unequal
            return bool(np.array_equal(left, right, equal_nan=True))
        return False
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    if isinstance(a, Sequence) and isinstance(b, Sequence) and not isinstance(a, str):
        return (
            not isinstance(b, str)
            and len(a) == len(b)
            and all(same_values(x, y) for x, y in zip(a, b))
        )
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def spec_changes(old: object, new: object, path: tuple = ()) -> list[tuple[tuple, object]]:
    """The ``(property path, new value)`` pairs that turn ``old`` into ``new``.

    Dicts are compared key by key and equal-length lists of dicts item by item, so a changed
    colour range becomes ``('coloraxis', 'cmin')`` rather than a whole new colour axis; a removed
    key maps to ``None`` (plotly deletes it).

    Example:
        >>> old = {"coloraxis": {"cmin": -1, "cmax": 1}, "annotations": [{"text": "a"}]}
        >>> new = {"coloraxis": {"cmin": -2, "cmax": 1}, "annotations": [{"text": "b"}]}
        >>> sorted(spec_changes(old, new))
        [(('annotations', 0, 'text'), 'b'), (('coloraxis', 'cmin'), -2)]
    """
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        changes = []
        for key in old.keys() | new.keys():
            if key not in new:
                changes.append(((*path, key), None))
            elif key not in old:
                changes.append(((*path, key), new[key]))
            else:
                changes.extend(spec_changes(old[key], new[key], (*path, key)))
        return changes
    if same_values(old, new):
        return []
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and all(isinstance(item, Mapping) for item in old + new)
    ):
        changes = []
        for i, (a, b) in enumerate(zip(old, new)):
            changes.extend(spec_changes(a, b, (*path, i)))
        return changes
    return [(path, new)]


def apply_spec(figure: go.FigureWidget, old_spec: dict, new_spec: dict) -> int:
    """Turn a FigureWidget showing ``old_spec`` into ``new_spec``, sending only what differs.

    Traces are kept as long as their types match, in order; the rest are deleted and the new ones
    added. Property changes go out as one message (``batch_update``). The FigureWidget itself is
    never replaced, so the page keeps one plot element per panel.

    Returns:
        The number of properties changed plus traces deleted and added.
    """
    old_types = [t.get("type") for t in old_spec["data"]]
    new_types = [t.get("type") for t in new_spec["data"]]
    keep = 0
    while keep < min(len(old_types), len(new_types)) and old_types[keep] == new_types[keep]:
        keep += 1
    changes = 0
    if len(figure.data) > keep:
        changes += len(figure.data) - keep
        figure.data = figure.data[:keep]
    trace_changes = [
        (trace, path, value)
        for trace, old, new in zip(figure.data, old_spec["data"], new_spec["data"])
        for path, value in spec_changes(old, new)
    ]
    layout_changes = spec_changes(old_spec["layout"], new_spec["layout"])
    # Removals first and outside the batch: inside one, plotly leaves an empty {} where a
    # container was removed, and an empty "xaxis4" would draw a stray axis on a fresh render.
    for trace, path, value in trace_changes:
        if value is None:
            trace[path] = None
    for path, value in layout_changes:
        if value is None:
            figure.layout[path] = None
    with figure.batch_update():
        for trace, path, value in trace_changes:
            if value is not None:
                trace[path] = value
        for path, value in layout_changes:
            if value is not None:
                figure.layout[path] = value
    changes += len(trace_changes) + len(layout_changes)
    if len(new_spec["data"]) > keep:
        figure.add_traces(new_spec["data"][keep:])
        changes += len(new_spec["data"]) - keep
    return changes


def make_panel(name: str):
    """The panel the explorer draws ``name`` in: ``figure_widget.PlotPanel`` where it exists
    (a plot widget whose state is its figure), else :class:`FigurePanel`.

    Both have the same API: ``box``, ``figure``, ``spec``, ``rendered_key``, ``show(spec, key)``,
    ``sync()``.
    """
    try:
        from .figure_widget import PlotPanel
    except ImportError:
        return FigurePanel(name)
    return PlotPanel(name)


class FigurePanel:
    """One panel: a FigureWidget inside a Box that carries a stable CSS class ``hv-fig-<name>``.

    The figure is a :class:`~hessviz.widgets.figure_widget.SharedFigureWidget`, so all panels of
    a page share one copy of plotly's browser code.

    :meth:`show` takes a figure spec (``hessviz.figures.*_spec``) and updates the one long-lived
    FigureWidget in place, sending only the properties that differ from the last spec.

    Attributes:
        name: the panel's name (``"hessian"``, ``"layers"``, …).
        box: the container to place in a layout; its only child is :attr:`figure`.
        figure: the FigureWidget (CSS class ``hv-figure``).
        spec: the spec it shows.
        rendered_key: what the caller said the spec shows (lets it skip identical redraws).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.figure = SharedFigureWidget()
        self.figure.add_class("hv-figure")
        # plotly.js's own window-resize handler (the FigureWidget view registers one only when
        # its host sends it Lumino attach messages, which Voila's anywidget views do not get).
        self.figure._config = {"responsive": True, "displaylogo": False}
        # A VBox stretches its child to the full width (in a plain Box plotly falls back to 700px).
        self.box = widgets.VBox([self.figure], layout=widgets.Layout(width="100%"))
        self.box.add_class(f"hv-fig-{name}")
        self.spec: dict = {"data": [], "layout": {}}
        self.rendered_key: object = None

    def show(self, figure_spec: dict, key: object = None) -> None:
        """Display a figure spec; ``key`` records what it shows."""
        apply_spec(self.figure, self.spec, figure_spec)
        self.spec = figure_spec
        self.rendered_key = key

    def sync(self) -> None:
        """Sync the FigureWidget before its (re)display; see :func:`sync_for_display`."""
        sync_for_display(self.figure)
