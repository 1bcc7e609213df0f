"""Panel 7: the method race — how long each registered method takes on the current model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._common import GRID, SERIES, figure_function, fmt, note_annotation, spec


@dataclass(frozen=True)
class RaceEntry:
    """One timed run.

    Attributes:
        method: the method's name (``method=`` value).
        operation: ``"hessian"`` or ``"diagonal"``.
        seconds: median wall time of one call, or ``None`` when not run yet / failed.
        note: a short remark (e.g. why it failed), shown on hover.
    """

    method: str
    operation: str
    seconds: float | None
    note: str = ""


def race_spec(entries: Sequence[RaceEntry], *, subtitle: str = "") -> dict:
    """Horizontal bars of milliseconds per call, one group per operation, fastest marked.

    Args:
        entries: the runs so far (entries with ``seconds=None`` show as empty rows; with none
            timed, the plot says "not timed yet").
        subtitle: a sentence under the plot (problem size, repetitions).

    Returns:
        Spec dict (``*_figure``: ``go.Figure``) with one bar trace per operation, in first-seen
        order.

    Example:
        >>> entries = [RaceEntry("func", "hessian", 2e-3), RaceEntry("loop", "hessian", 9e-3)]
        >>> fig = race_figure(entries)
        >>> fig.data[0].x.tolist(), list(fig.data[0].y)
        ([2.0, 9.0], ['func', 'loop'])
    """
    operations = list(dict.fromkeys(e.operation for e in entries))
    data = []
    for k, operation in enumerate(operations):
        rows = [e for e in entries if e.operation == operation]
        times = [e.seconds for e in rows]
        measured = [t for t in times if t is not None]
        fastest = min(measured) if measured else None
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": operation,
                "y": [e.method for e in rows],
                "x": np.array([np.nan if t is None else 1e3 * t for t in times]),
                "text": [
                    ("…" if not e.note else e.note)
                    if e.seconds is None
                    else f"{fmt(1e3 * e.seconds)} ms"
                    + (" (fastest)" if e.seconds == fastest else "")
                    for e in rows
                ],
                "textposition": "auto",
                "marker": {"color": SERIES[k % len(SERIES)]},
                "hovertemplate": "%{y}: %{x:.3g} ms per call<extra>" + operation + "</extra>",
            }
        )
    layout = {
        "height": 140 + 28 * max(1, len(entries)),
        "showlegend": True,
        "barmode": "group",
        "title": {"text": "Method race: milliseconds per call (median)", "x": 0.0},
        "xaxis": {"gridcolor": GRID, "title": {"text": "ms per call"}, "rangemode": "tozero"},
        "yaxis": {"autorange": "reversed"},
        "margin": {"l": 100, "r": 30, "t": 60, "b": 80},
        "annotations": [note_annotation(subtitle, y=-0.25)] if subtitle else [],
    }
    if not any(e.seconds is not None for e in entries):  # empty axes would look like a failure
        layout["annotations"].append(
            {
                "text": "not timed yet",
                "x": 0.5,
                "y": 0.5,
                "xref": "paper",
                "yref": "paper",
                "showarrow": False,
                "font": {"size": 14, "color": "grey"},
            }
        )
    return spec(data, layout)


race_figure = figure_function(race_spec)
