"""Shared building blocks of the figures: colour scales, subplot grids, matrix axes, formats.

Figures are assembled from plain dicts and turned into a ``go.Figure`` once at the end: that is
about ten times faster than ``make_subplots`` + ``add_trace`` (which validates every property on
the way), and it keeps the explorer within its latency budget.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import textwrap
from collections.abc import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import get_colorscale

#: Diverging scale for signed second derivatives: blue < 0 < red, white at 0. Written out as
#: colours: plotly.js knows no "_r" names (only plotly.py's validation expands them), and a plot
#: widget sends the spec to plotly.js as it is.
DIVERGING = get_colorscale("RdBu_r")
#: Sequential scale for (log) errors.
ERRORS = "Viridis"
#: Colours for signs and series (plotly 7 accepts only 0–255 rgb or hex colours).
POSITIVE = "#c0392b"
NEGATIVE = "#2c6fbb"
NEUTRAL = "#7f7f7f"
SERIES = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
#: Font for values printed inside heatmap cells.
CELL_FONT = {"size": 11}
#: Grid lines of line and bar charts (on the white background).
GRID = "#e6e6e6"
#: Up to this many inputs, heatmaps print their values in the cells.
MAX_N_WITH_VALUES = 6
#: Colour of cells that hold round-off, not curvature.
NOISE = "#bdbdbd"
#: Tick labels of value colour bars: scientific notation (never SI prefixes like "400p").
SCIENTIFIC = {"exponentformat": "e", "showexponent": "all", "nticks": 5}


def as_array(values, ndim: int, name: str) -> np.ndarray:
    """``values`` as a float64 numpy array with ``ndim`` dimensions (no torch needed here).

    Raises:
        ValueError: if the shape has the wrong number of dimensions.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {array.shape}.")
    return array


def fmt(value: float, digits: int = 3) -> str:
    """A short human number: ``0.0123`` → ``'0.0123'``, ``1.2e-09`` → ``'1.2e-9'``.

    Example:
        >>> fmt(0.0123), fmt(1.234e-9), fmt(12345.0), fmt(0.0)
        ('0.0123', '1.23e-9', '1.23e4', '0')
    """
    if value is None or not np.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    text = f"{value:.{digits}g}"
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m.group(1).replace("+", "") + m.group(2), text)


def axis_key(k: int, letter: str = "x") -> str:
    """Layout key of the k-th axis (1-based): ``'xaxis'``, ``'xaxis2'``, …"""
    return f"{letter}axis" if k == 1 else f"{letter}axis{k}"


def axis_ref(k: int, letter: str = "x") -> str:
    """Trace reference of the k-th axis (1-based): ``'x'``, ``'x2'``, …"""
    return letter if k == 1 else f"{letter}{k}"


def grid_domains(
    n_cols: int,
    n_rows: int = 1,
    *,
    hgap: float = 0.06,
    vgap: float = 0.12,
    right: float = 1.0,
    top: float = 1.0,
    bottom: float = 0.0,
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Paper domains ``(x_domain, y_domain)`` of a row-major grid of equal cells.

    The grid fills ``[0, right] × [bottom, top]``.

    Returns:
        ``n_rows * n_cols`` pairs, the first cell at the top left.
    """
    width = (right - hgap * (n_cols - 1)) / n_cols
    height = (top - bottom - vgap * (n_rows - 1)) / n_rows
    cells = []
    for r in range(n_rows):
        y1 = top - r * (height + vgap)
        for c in range(n_cols):
            x0 = c * (width + hgap)
            cells.append(((x0, x0 + width), (max(y1 - height, bottom), y1)))
    return cells


def matrix_axes(
    k: int,
    domain: tuple[tuple[float, float], tuple[float, float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    show_row_labels: bool = True,
) -> dict:
    """Layout entries for subplot ``k`` drawn like a matrix: row 0 on top, square cells.

    Heatmaps on these axes use integer coordinates: ``x`` = column index, ``y`` = row index, so a
    hover template can print ``%{y}`` and ``%{x}`` as indices.
    """
    x_domain, y_domain = domain
    return {
        axis_key(k, "x"): {
            "domain": list(x_domain),
            "anchor": axis_ref(k, "y"),
            "tickmode": "array",
            "tickvals": list(range(len(col_labels))),
            "ticktext": list(col_labels),
            "side": "top",
            "ticks": "",
            "showgrid": False,
            "zeroline": False,
            "constrain": "domain",
        },
        axis_key(k, "y"): {
            "domain": list(y_domain),
            "anchor": axis_ref(k, "x"),
            "autorange": "reversed",
            "tickmode": "array",
            "tickvals": list(range(len(row_labels))),
            "ticktext": list(row_labels) if show_row_labels else [""] * len(row_labels),
            "ticks": "",
            "showgrid": False,
            "zeroline": False,
            "scaleanchor": axis_ref(k, "x"),
            "scaleratio": 1,
            "constrain": "domain",
            # A narrow plot shrinks the square cells: they stay under their title, not adrift.
            "constraintoward": "top",
        },
    }


def subplot_title(text: str, domain, *, y_pad: float = 0.0) -> dict:
    """An annotation centred above a subplot, as ``make_subplots(subplot_titles=…)`` makes."""
    (x0, x1), (_, y1) = domain
    return {
        "text": text,
        "x": (x0 + x1) / 2,
        "y": y1 + y_pad,
        "xref": "paper",
        "yref": "paper",
        "xanchor": "center",
        "yanchor": "bottom",
        "showarrow": False,
        "font": {"size": 13},
        "yshift": 22,
    }


def wrap(text: str, width: int = 120) -> str:
    """Break a sentence into lines for a plotly annotation (which never wraps by itself)."""
    return "<br>".join(textwrap.wrap(text, width)) if text else ""


def note_annotation(text: str, *, y: float = -0.08, size: int = 12, width: int = 120) -> dict:
    """A left-aligned sentence under the plots, wrapped at ``width`` characters."""
    return {
        "text": wrap(text, width),
        "x": 0,
        "y": y,
        "xref": "paper",
        "yref": "paper",
        "xanchor": "left",
        "yanchor": "top",
        "align": "left",
        "showarrow": False,
        "font": {"size": size},
    }


def symmetric_range(*arrays: np.ndarray) -> float:
    """Half-width ``a`` of a colour range ``[-a, a]`` centred at 0 that covers every array.

    Never 0 (an all-zero matrix gets ``a = 1`` so that it shows as white, not as an error).
    """
    finite = [np.abs(a[np.isfinite(a)]) for a in arrays if a.size]
    top = max((float(f.max()) for f in finite if f.size), default=0.0)
    return top if top > 0 else 1.0


def diverging_coloraxis(
    half_range: float, *, colorbar_x: float = 1.0, title: str = "", colorbar: dict | None = None
) -> dict:
    """A shared diverging colour axis on ``[-half_range, half_range]`` (centred at 0).

    Its bar stands at ``colorbar_x``, or is placed by ``colorbar`` (e.g. :func:`colorbar_below`).
    """
    bar = {"x": colorbar_x, "thickness": 12, "len": 0.9} if colorbar is None else colorbar
    return {
        "colorscale": DIVERGING,
        "cmin": -half_range,
        "cmax": half_range,
        "colorbar": {**bar, **SCIENTIFIC, "title": {"text": title}},
    }


def noise_overlay(
    k: int, mask: np.ndarray, floor: float, *, what: str = "FD", label: bool = True
) -> dict:
    """A grey heatmap over subplot ``k`` that covers the cells where ``mask`` is true.

    Marks finite-difference values below the round-off floor as noise: a reader should not
    mistake ±1e-10 of rounding for curvature. Cells outside the mask are transparent gaps;
    with ``label`` the grey cells say "noise" (leave it off where cells are too small).
    """
    z = np.where(mask, 1.0, np.nan)
    text = [["noise" if cell and label else "" for cell in row] for row in mask]
    return {
        "type": "heatmap",
        "name": "noise",
        "z": z,
        "x": np.arange(mask.shape[1]),
        "y": np.arange(mask.shape[0]),
        "xaxis": axis_ref(k, "x"),
        "yaxis": axis_ref(k, "y"),
        "colorscale": [[0, NOISE], [1, NOISE]],
        "showscale": False,
        "zmin": 0,
        "zmax": 1,
        "text": text,
        "texttemplate": "%{text}",
        "textfont": {"size": 10, "color": "#555555"},
        "hovertemplate": f"{what} value below the round-off floor {floor:.1e}: noise, not "
        "curvature<extra></extra>",
        "xgap": 1,
        "ygap": 1,
    }


def honest_range(exact: np.ndarray, *estimates: np.ndarray, floor: float | None = None) -> float:
    """Half-width of a colour range set by ``exact`` and the estimates' values above ``floor``.

    Values below the noise floor do not stretch the scale: on a ReLU network the exact Hessian
    is 0 and FD noise of 1e-10 stays white instead of filling the scale.
    """
    kept = [exact]
    for estimate in estimates:
        kept.append(estimate if floor is None else np.where(np.abs(estimate) > floor, estimate, 0))
    return symmetric_range(*kept)


def colorbar_below(x_domain: tuple[float, float], y_domain: tuple[float, float]) -> dict:
    """Colour-bar settings that lay the bar flat under subplots spanning ``x_domain`` (paper).

    A vertical bar between two subplots needs a fixed ~60 px for its tick labels; in a narrow
    output area (a JupyterLab notebook beside the explorer's controls) the gap is smaller and the
    labels run into the next matrix. A flat bar below takes its width from the subplots instead.

    Example:
        >>> bar = colorbar_below((0.0, 0.5), (0.1, 0.9))
        >>> bar["orientation"], bar["x"], bar["len"], bar["yanchor"]
        ('h', 0.25, 0.5, 'top')
    """
    (x0, x1), (y0, _) = x_domain, y_domain
    return {
        "orientation": "h",
        "x": (x0 + x1) / 2,
        "xanchor": "center",
        "len": x1 - x0,
        "y": y0 - 0.04,
        "yanchor": "top",
        "thickness": 10,
    }


def value_and_error_axes(
    half_range: float, low: float, high: float, error_colorbar: dict, domains: list
) -> dict:
    """Colour axes of a row of value matrices followed by one error matrix.

    ``coloraxis`` is diverging on ``[-half_range, half_range]``, shared by every subplot but the
    last, its bar flat under them; ``coloraxis2`` is the log error scale ``[low, high]`` of
    :func:`log_error_grid` (``error_colorbar`` labels its ticks), its bar under the last subplot.

    Example:
        >>> axes = value_and_error_axes(1.0, -3, 0, {}, grid_domains(3))
        >>> axes["coloraxis"]["cmin"], axes["coloraxis2"]["cmax"]
        (-1.0, 0)
        >>> axes["coloraxis"]["colorbar"]["len"] > axes["coloraxis2"]["colorbar"]["len"]
        True
    """
    *values, error = domains
    shared_x = (values[0][0][0], values[-1][0][1])
    return {
        "coloraxis": diverging_coloraxis(
            half_range, colorbar=colorbar_below(shared_x, values[0][1])
        ),
        "coloraxis2": {
            "colorscale": ERRORS,
            "showscale": True,
            "cmin": low,
            "cmax": high,
            "colorbar": {**error_colorbar, **colorbar_below(*error)},
        },
    }


def log_error_grid(errors: np.ndarray) -> tuple[np.ndarray, float, float, dict]:
    """Map absolute errors to ``log10`` for a log colour scale.

    Exact zeros cannot be shown on a log scale: they are drawn at the bottom of the scale (one
    decade below the smallest non-zero error, or at 1e-16 when everything is zero).

    Returns:
        ``(log10_errors, zmin, zmax, colorbar)``; ``colorbar`` labels the ticks as powers of ten.
    """
    errors = np.abs(errors)
    positive = errors[(errors > 0) & np.isfinite(errors)]
    if positive.size:
        low = math.floor(math.log10(float(positive.min()))) - 1
        high = max(math.ceil(math.log10(float(positive.max()))), low + 1)
    else:
        low, high = -16, -15
    safe = np.where((errors > 0) & np.isfinite(errors), errors, 10.0**low)
    logs = np.log10(safe)
    ticks = list(range(low, high + 1, max(1, (high - low) // 6)))
    colorbar = {
        "thickness": 12,
        "len": 0.9,
        "tickmode": "array",
        "tickvals": ticks,
        "ticktext": [f"1e{t}" for t in ticks],
    }
    return logs, float(low), float(high), colorbar


def cell_text(values: np.ndarray, show: bool, digits: int = 3) -> list[list[str]] | None:
    """Per-cell labels (``None`` when the matrix is too big to print its values)."""
    if not show:
        return None
    return [[fmt(float(v), digits) for v in row] for row in values]


def heatmap(
    k: int,
    z: np.ndarray,
    *,
    name: str,
    hover: str,
    coloraxis: str | None = None,
    text: list[list[str]] | None = None,
    customdata: np.ndarray | None = None,
    **extra,
) -> dict:
    """A heatmap trace dict on subplot ``k`` with integer cell coordinates (``x`` = column)."""
    trace = {
        "type": "heatmap",
        "name": name,
        "z": z,
        "x": np.arange(z.shape[1]),
        "y": np.arange(z.shape[0]),
        "xaxis": axis_ref(k, "x"),
        "yaxis": axis_ref(k, "y"),
        "hovertemplate": hover,
        "text": text,
        "texttemplate": "%{text}" if text is not None else None,
        "textfont": CELL_FONT,
        "customdata": customdata,
        "xgap": 1,
        "ygap": 1,
    }
    if coloraxis is not None:
        trace["coloraxis"] = coloraxis
    trace.update(extra)
    return trace


def spec(data: list[dict], layout: dict) -> dict:
    """A figure as a plain ``{"data": [...], "layout": {...}}`` dict: ``None`` entries dropped,
    white background.

    Colours are set directly rather than through a named template: assigning a template validates
    (deep-copies) all of it, which costs far more than the figure itself.
    """
    clean = [{key: value for key, value in trace.items() if value is not None} for trace in data]
    base = {
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "margin": {"l": 50, "r": 30, "t": 80, "b": 40},
        "showlegend": False,
    }
    base.update(layout)
    return {"data": clean, "layout": base}


def to_figure(figure_spec: dict) -> go.Figure:
    """A ``go.Figure`` from a spec made by :func:`spec` (validated by plotly here)."""
    return go.Figure(data=figure_spec["data"], layout=figure_spec["layout"])


def figure_function(make_spec: Callable[..., dict]) -> Callable[..., go.Figure]:
    """``X_figure`` from ``X_spec``: same arguments and docs, returns a ``go.Figure``.

    Every panel exists in both forms: the spec (plain dicts, cheap to build and to compare, which
    the explorer uses to update long-lived FigureWidgets in place) and the figure.
    """

    @functools.wraps(make_spec)
    def make_figure(*args, **kwargs) -> go.Figure:
        return to_figure(make_spec(*args, **kwargs))

    name = make_spec.__name__
    make_figure.__name__ = make_figure.__qualname__ = name.replace("_spec", "_figure")
    # The spec function carries the full docs (and so its doctest runs once).
    make_figure.__doc__ = f"The figure of :func:`{name}` as a ``go.Figure`` (same arguments)."
    make_figure.__signature__ = inspect.signature(make_spec).replace(return_annotation="go.Figure")
    return make_figure
