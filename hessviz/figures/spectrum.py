"""Panel 3: eigenvalues of one output's Hessian, the curvature verdict, and the eigenvectors."""

from __future__ import annotations

import numpy as np

from ._common import (
    MAX_N_WITH_VALUES,
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    as_array,
    axis_key,
    cell_text,
    diverging_coloraxis,
    figure_function,
    fmt,
    heatmap,
    matrix_axes,
    spec,
    subplot_title,
)
from .curvature import zero_tolerance


def spectrum_spec(
    eigenvalues,
    eigenvectors,
    *,
    verdict: str,
    description: str = "",
    output: int = 0,
    tolerance: float | None = None,
) -> dict:
    """Bar chart of the eigenvalues (coloured by sign) beside a heatmap of the eigenvectors.

    Args:
        eigenvalues: ``(n,)`` ascending (see :func:`~hessviz.figures.curvature.sorted_eigh`).
        eigenvectors: ``(n, n)`` unit eigenvectors as columns; column ``k`` belongs to ``λ_k``.
        verdict: ``minimum`` / ``maximum`` / ``saddle`` / ``flat`` (the title says it).
        description: one sentence under the title.
        output: the output index ``i`` whose Hessian this is.
        tolerance: eigenvalues with ``|λ| ≤ tolerance`` are grey; default
            :func:`~hessviz.figures.curvature.zero_tolerance`.

    Returns:
        Spec dict (``*_figure``: ``go.Figure``) with a bar trace (``eigenvalues``) and a heatmap
        trace (``eigenvectors``).

    Example:
        >>> fig = spectrum_figure([-1.0, 2.0], np.eye(2), verdict="saddle")
        >>> fig.data[0].y.tolist(), fig.data[1].z.shape
        ([-1.0, 2.0], (2, 2))
    """
    values = as_array(eigenvalues, 1, "eigenvalues")
    vectors = as_array(eigenvectors, 2, "eigenvectors")
    n = values.size
    tol = zero_tolerance(values) if tolerance is None else tolerance
    colours = [POSITIVE if v > tol else NEGATIVE if v < -tol else NEUTRAL for v in values]
    names = [f"λ{k}" for k in range(n)]
    bars = {
        "type": "bar",
        "name": "eigenvalues",
        "x": names,
        "y": values,
        "marker": {"color": colours},
        "text": [fmt(float(v)) for v in values],
        "textposition": "outside",
        "cliponaxis": False,
        "hovertemplate": "%{x} = %{y:.6g}<extra></extra>",
        "xaxis": "x",
        "yaxis": "y",
    }
    values_domain = ((0.0, 0.42), (0.0, 0.8))
    vectors_domain = ((0.55, 0.93), (0.0, 0.8))
    grid = heatmap(
        2,
        vectors,
        name="eigenvectors",
        hover="component x_%{y} of the eigenvector of λ%{x} = %{z:.3f}<extra></extra>",
        coloraxis="coloraxis",
        text=cell_text(vectors, n <= MAX_N_WITH_VALUES, digits=2),
    )
    top = float(np.abs(values).max()) if n else 1.0
    layout: dict = {
        "height": 320,
        "title": {
            "text": f"Verdict: <b>{verdict}</b><br><sup>{description}</sup>",
            "x": 0.0,
            "xanchor": "left",
            "yref": "container",
            "y": 1.0,
            "yanchor": "top",
            "pad": {"t": 12},
        },
        "margin": {"l": 50, "r": 30, "t": 90, "b": 40},
        axis_key(1, "x"): {"domain": list(values_domain[0]), "anchor": "y"},
        axis_key(1, "y"): {
            "domain": list(values_domain[1]),
            "anchor": "x",
            "zeroline": True,
            "zerolinecolor": "#444444",
            "range": [-1.25 * top, 1.25 * top] if top > 0 else [-1.0, 1.0],
        },
        "coloraxis": diverging_coloraxis(1.0, colorbar_x=0.95),
        "annotations": [
            subplot_title(f"eigenvalues of ∂²y_{output}/∂x²", values_domain),
            subplot_title("eigenvectors (columns)", vectors_domain),
        ],
    }
    layout.update(matrix_axes(2, vectors_domain, [f"x{j}" for j in range(n)], names))
    return spec([bars, grid], layout)


spectrum_figure = figure_function(spectrum_spec)
