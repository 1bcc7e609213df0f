"""Panel 4: the Hessian split into one term per activation layer, and the check that they add up.

For ``y = W_L σ(… σ(W_1 x + b_1) …) + b_L`` the structured engine writes

    ∂²y_i/∂x² = Σ_l J_lᵀ diag(σ''(z_l) ⊙ ∂y_i/∂a_l) J_l,

with ``z_l`` the pre-activations of layer ``l``, ``a_l = σ(z_l)`` and ``J_l = ∂z_l/∂x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._common import (
    MAX_N_WITH_VALUES,
    as_array,
    cell_text,
    diverging_coloraxis,
    figure_function,
    fmt,
    grid_domains,
    heatmap,
    matrix_axes,
    note_annotation,
    spec,
    subplot_title,
    symmetric_range,
)

#: Columns of small heatmaps per row.
COLUMNS = 4

_PIECEWISE_LINEAR = {
    "relu": (
        "ReLU is piecewise linear: σ''(z) = 0 wherever it is differentiable, so every term "
        "J_lᵀ diag(σ''(z_l) ⊙ ∂y/∂a_l) J_l is exactly zero and so is the Hessian "
        "(almost everywhere; only the kinks, a set of measure zero, are excluded)."
    ),
    "linear": (
        "With no nonlinearity the network is one affine map f(x) = Wx + b: there is no activation "
        "layer to contribute a term, and the Hessian is exactly zero."
    ),
}


def vanishing_explanation(activation: str, hidden_layers: int) -> str | None:
    """Why every layer term vanishes for this architecture, or ``None`` when they need not.

    Example:
        >>> vanishing_explanation("tanh", 2) is None, vanishing_explanation("relu", 2)[:4]
        (True, 'ReLU')
    """
    if hidden_layers == 0:
        return (
            "With no hidden layer the network is affine, f(x) = Wx + b: no activation layer "
            "contributes a term, and the Hessian is exactly zero."
        )
    return _PIECEWISE_LINEAR.get(activation)


def layer_terms_spec(
    terms: Sequence[tuple[str, np.ndarray]],
    total,
    *,
    output: int = 0,
    note: str | None = None,
    show_values: bool | None = None,
) -> dict:
    """One small heatmap per layer term, then their sum, then the full Hessian.

    All panels share one diverging colour axis centred at 0. The title states the decomposition and
    the sum check ``max|Σ_l H_l − H|``.

    Args:
        terms: ``(label, (n, n) term)`` per activation layer, in network order (may be empty).
        total: ``(n, n)`` the full Hessian of output ``output`` from the engine.
        output: output index ``i``.
        note: a sentence under the plots (e.g. :func:`vanishing_explanation`).
        show_values: print values in cells; default when ``n ≤ 4`` (the panels are small).

    Returns:
        Spec dict (``*_figure``: ``go.Figure``) with ``len(terms) + 2`` heatmap traces (terms…, ``Σ
        terms``, ``H``); with no terms, one heatmap (``H``).

    Example:
        >>> h1, h2 = np.eye(2), -np.eye(2) / 2
        >>> fig = layer_terms_figure([("layer 1", h1), ("layer 3", h2)], h1 + h2)
        >>> [t.name for t in fig.data], fig.data[2].z.tolist()
        (['layer 1', 'layer 3', 'Σ terms', 'H'], [[0.5, 0.0], [0.0, 0.5]])
    """
    total = as_array(total, 2, "total")
    matrices = [as_array(t, 2, label) for label, t in terms]
    labels = [label for label, _ in terms]
    n = total.shape[0]
    if show_values is None:
        show_values = n <= 4
    if matrices:
        summed = np.sum(matrices, axis=0)
        check = float(np.abs(summed - total).max())
        panels = [*zip(labels, matrices), ("Σ terms", summed), ("H", total)]
        titles = [*labels, "Σ_l H_l", f"H = ∂²y_{output}/∂x²"]
        headline = (
            f"H = Σ_l H_l over {len(matrices)} activation layer{'s' if len(matrices) > 1 else ''}"
            f" — sum check: max|Σ_l H_l − H| = {fmt(check, 2)}"
        )
    else:
        panels = [("H", total)]
        titles = [f"H = ∂²y_{output}/∂x²"]
        headline = "No activation layer: nothing to decompose"
    half = symmetric_range(*(m for _, m in panels))
    columns = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    domains = grid_domains(columns, rows, hgap=0.05, vgap=0.18 / rows, right=0.92)
    axis_labels = [f"x{j}" for j in range(n)]
    hover = "∂²y_{i}/∂x_%{{y}}∂x_%{{x}} = %{{z:.6g}}<extra>{name}</extra>"
    data, annotations = [], []
    layout: dict = {}
    for k, ((name, matrix), title, domain) in enumerate(zip(panels, titles, domains), start=1):
        data.append(
            heatmap(
                k,
                matrix,
                name=name,
                hover=hover.format(i=output, name=name),
                coloraxis="coloraxis",
                text=cell_text(matrix, show_values and n <= MAX_N_WITH_VALUES, digits=2),
            )
        )
        annotations.append(subplot_title(title, domain))
        layout.update(matrix_axes(k, domain, axis_labels, axis_labels, show_row_labels=k == 1))
    if note:
        annotations.append(note_annotation(note, y=-0.04))
    layout.update(
        {
            "height": 90 + 230 * rows + (40 if note else 0),
            "title": {"text": headline, "x": 0.0, "xanchor": "left", "font": {"size": 14}},
            "margin": {"l": 50, "r": 30, "t": 100, "b": 70 if note else 20},
            "coloraxis": diverging_coloraxis(half, colorbar_x=0.94),
            "annotations": annotations,
        }
    )
    return spec(data, layout)


layer_terms_figure = figure_function(layer_terms_spec)
