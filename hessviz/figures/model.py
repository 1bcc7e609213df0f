"""Panels of the explorer for a user's own model (:meth:`HessianExplorer.for_model`).

The matrix panels reuse :func:`~hessviz.figures.hessian_spec`,
:func:`~hessviz.figures.spectrum_spec` and :func:`~hessviz.figures.layer_terms_spec`;
:func:`with_names` puts the user's input names on their axes. :func:`diagonals_spec` draws
every output's diagonal (the second-order Jacobian) with the Laplacians, exact values only.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

import numpy as np

from ._common import (
    MAX_N_WITH_VALUES,
    as_array,
    axis_key,
    cell_text,
    diverging_coloraxis,
    figure_function,
    fmt,
    heatmap,
    matrix_axes,
    spec,
    symmetric_range,
)
from .layers import layer_terms_spec


def with_names(
    figure_spec: dict,
    *,
    inputs: Sequence[str],
    outputs: Sequence[str] | None = None,
    output: tuple[int, str] | None = None,
) -> dict:
    """A copy of a matrix panel's spec whose ``x0, x1, …`` / ``y0, …`` tick labels are names.

    Every axis whose tick labels are exactly ``x0 … x{n-1}`` (``n = len(inputs)``) gets
    ``inputs``; with ``outputs``, every axis labelled ``y0 … y{m-1}`` gets ``outputs``. With
    ``output = (i, name)``, ``y_i`` / ``y{i}`` in the title and subplot titles become ``name``.

    Example:
        >>> s = {"data": [], "layout": {"xaxis": {"ticktext": ["x0", "x1"]},
        ...      "annotations": [{"text": "exact ∂²y_0/∂x²"}]}}
        >>> named = with_names(s, inputs=["t", "s"], output=(0, "u"))["layout"]
        >>> named["xaxis"]["ticktext"], named["annotations"][0]["text"]
        (['t', 's'], 'exact ∂²u/∂x²')
    """
    named = copy.deepcopy(figure_spec)
    layout = named["layout"]
    defaults = {tuple(f"x{j}" for j in range(len(inputs))): list(inputs)}
    if outputs is not None:
        defaults[tuple(f"y{i}" for i in range(len(outputs)))] = list(outputs)
    for key, axis in layout.items():
        if key[1:5] == "axis" and isinstance(axis, dict):
            names = defaults.get(tuple(axis.get("ticktext") or ()))
            if names is not None:
                axis["ticktext"] = names
    if output is not None:
        pattern = re.compile(rf"(?<![A-Za-z0-9_])y_?{output[0]}(?![0-9])")
        texts = [*layout.get("annotations", []), layout.get("title") or {}]
        for item in texts:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                item["text"] = pattern.sub(output[1], item["text"])
    return named


def node_terms_spec(
    terms: Sequence[tuple[str, np.ndarray]],
    total,
    *,
    output: int,
    output_name: str,
    inputs: Sequence[str],
) -> dict:
    """:func:`~hessviz.figures.layer_terms_spec` for a model's curvature nodes, named.

    One heatmap per node term (labelled by :func:`hessviz.api.layer_terms`' module path and op),
    their sum and the Hessian; the headline counts *node* terms and sits above the subplot
    titles (there is no network diagram to make room for it).

    Example:
        >>> fig = node_terms_figure([("net.1 · tanh", np.eye(2))], np.eye(2), output=0,
        ...                         output_name="u", inputs=["x", "t"])
        >>> [t.name for t in fig.data], fig.layout.title.text[:38]
        (['net.1 · tanh', 'Σ terms', 'H'], 'The Hessian is the sum of 1 node term ')
    """
    figure_spec = layer_terms_spec(list(terms), total, output=output)
    layout = figure_spec["layout"]
    layout["title"] = {
        **layout["title"],
        "text": layout["title"]["text"].replace("layer term", "node term"),
        "yref": "container",
        "y": 1.0,
        "yanchor": "top",
        "pad": {"t": 10},
    }
    layout["margin"] = {**layout["margin"], "t": layout["margin"]["t"] + 20}
    layout["height"] += 20
    return with_names(figure_spec, inputs=inputs, output=(output, output_name))


def diagonals_spec(
    diagonals,
    *,
    inputs: Sequence[str],
    outputs: Sequence[str],
    laplacians=None,
    show_values: bool | None = None,
) -> dict:
    """Every output's Hessian diagonal ``∂²y_i/∂x_j²`` (the second-order Jacobian) as one matrix.

    Row ``i`` is output ``i``, column ``j`` input ``j``; a diverging colour scale centred at 0.
    With ``laplacians`` (``(m,)``, the row sums), the title gives them: for a single output such
    as a PINN's ``u`` that is ``Δu``.

    Args:
        diagonals: ``(m, n)`` exact diagonals (``hv.hessian_diagonal(f, x, flat=True)``).
        inputs, outputs: names of the ``n`` columns and ``m`` rows.
        laplacians: ``(m,)`` traces ``Σ_j ∂²y_i/∂x_j²`` (``hv.laplacian``), or ``None``.
        show_values: print values in cells; default when ``n ≤ 6``.

    Returns:
        Spec dict (``*_figure``: ``go.Figure``) with one heatmap trace ``diagonal``.

    Example:
        >>> d = [[1.0, -2.0]]
        >>> fig = diagonals_figure(d, inputs=["t", "s"], outputs=["u"], laplacians=[-1.0])
        >>> fig.data[0].z.tolist(), fig.layout.xaxis.ticktext
        ([[1.0, -2.0]], ('t', 's'))
    """
    z = as_array(diagonals, 2, "diagonals")
    m, n = z.shape
    if show_values is None:
        show_values = n <= MAX_N_WITH_VALUES
    title = "Every output's diagonal ∂²y_i/∂x_j²"
    if laplacians is not None:
        lap = np.asarray(laplacians, dtype=np.float64).reshape(-1)
        if m == 1:
            title += (
                f"<br><sup>Laplacian Δ{outputs[0]} = Σ_j ∂²/∂x_j² = {fmt(float(lap[0]), 6)}</sup>"
            )
        else:
            shown = ", ".join(f"{name}: {fmt(float(v), 3)}" for name, v in zip(outputs, lap))
            title += f"<br><sup>Laplacians (row sums): {shown}</sup>"
    domain = ((0.0, 0.9), (0.0, 1.0))
    trace = heatmap(
        1,
        z,
        name="diagonal",
        hover="∂²y_%{y}/∂x_%{x}² = %{z:.6g}<extra></extra>",
        coloraxis="coloraxis",
        text=cell_text(z, show_values),
    )
    layout: dict = {
        "height": min(520, 170 + 40 * m),
        "title": {"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 14}},
        "margin": {"l": 80, "r": 30, "t": 95, "b": 20},
        "coloraxis": diverging_coloraxis(symmetric_range(z), colorbar_x=0.93),
        **matrix_axes(1, domain, list(outputs), list(inputs)),
    }
    # Cells need not be square here: one row per output would make a flat strip of a PINN.
    layout[axis_key(1, "y")].pop("scaleanchor")
    return spec([trace], layout)


diagonals_figure = figure_function(diagonals_spec)
node_terms_figure = figure_function(node_terms_spec)
