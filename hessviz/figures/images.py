"""Panels for image inputs: a per-pixel quantity drawn as the image it belongs to.

For an input image ``(C, H, W)`` every pixel ``j`` has its own second derivative
``∂²y_i/∂x_j²`` (the Hessian's diagonal) and its own Hessian row ``∂²y_i/∂x_p∂x_j`` (how pixel
``p`` interacts with each pixel ``j``); both have the input's shape, so they are drawn as images:
row 0 on top, square pixels, a diverging colour scale centred at 0 (red bends up, blue down).
A multi-channel image is drawn with its channels stacked vertically (``C·H`` rows).
:func:`eigenvalues_spec` draws all eigenvalues of a Hessian too large for an eigenvector heatmap.
"""

from __future__ import annotations

import numpy as np

from ._common import (
    GRID,
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    diverging_coloraxis,
    figure_function,
    fmt,
    spec,
    symmetric_range,
)
from .curvature import zero_tolerance


def _image(values, name: str) -> np.ndarray:
    """``values`` as a float64 ``(rows, W)`` image (channels stacked vertically)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim < 2:
        raise ValueError(f"{name} must be an image (…, H, W), got shape {array.shape}.")
    return array.reshape(-1, array.shape[-1])


def _image_layout(rows: int, cols: int, title: str, half: float, *, size: int = 440) -> dict:
    """Square pixels, row 0 on top, the colour bar beside the image, the title above.

    The width is fixed (``size + 40`` px): in a wide plot the square image would sit in the middle
    with its colour bar far away at the right edge.
    """
    return {
        "height": size,
        "width": size + 40,
        "title": {"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 14}},
        "margin": {"l": 50, "r": 20, "t": 70, "b": 55},
        "xaxis": {
            "range": [-0.5, cols - 0.5],
            "constrain": "domain",
            "showgrid": False,
            "zeroline": False,
            "title": {"text": "column"},
        },
        "yaxis": {
            "range": [rows - 0.5, -0.5],
            "scaleanchor": "x",
            "scaleratio": 1,
            "constrain": "domain",
            "constraintoward": "top",
            "showgrid": False,
            "zeroline": False,
            "title": {"text": "row"},
        },
        "coloraxis": diverging_coloraxis(half, colorbar_x=1.0),
    }


def _pixels(z: np.ndarray, name: str, hover: str) -> dict:
    return {
        "type": "heatmap",
        "name": name,
        "z": z,
        "x": np.arange(z.shape[1]),
        "y": np.arange(z.shape[0]),
        "coloraxis": "coloraxis",
        "hovertemplate": hover,
    }


def diagonal_image_spec(diagonal, *, output: str = "y0") -> dict:
    """The diagonal of one output's Hessian, ``∂²y/∂x_j²`` for every pixel ``j``, as an image.

    Args:
        diagonal: ``(H, W)`` or ``(C, H, W)`` (any shape ending in ``(H, W)``): the diagonal
            reshaped like the input image.
        output: the output's name, for the title and hover text.

    Returns:
        Spec dict (``*_figure``: ``go.Figure``) with one heatmap trace ``diagonal`` whose ``z`` is
        the diagonal as an image (``(C·H, W)``).

    Example:
        >>> fig = diagonal_image_figure(np.arange(6.0).reshape(2, 3), output="class 2")
        >>> fig.data[0].name, fig.data[0].z.tolist()
        ('diagonal', [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    """
    z = _image(diagonal, "diagonal")
    half = symmetric_range(z)
    hover = f"pixel (row %{{y}}, column %{{x}}): ∂²{output}/∂x² = %{{z:.4g}}<extra></extra>"
    layout = _image_layout(
        *z.shape,
        f"How {output} bends along each pixel: ∂²{output}/∂x_j² as an image"
        f"<br><sup>largest |value| {fmt(float(np.abs(z).max()) if z.size else 0.0)}</sup>",
        half,
    )
    return spec([_pixels(z, "diagonal", hover)], layout)


def pixel_row_spec(row, *, pixel: tuple[int, int], output: str = "y0") -> dict:
    """Row ``p`` of one output's Hessian, ``∂²y/∂x_p∂x_j`` for every pixel ``j``, as an image.

    The chosen pixel ``p`` is outlined; the row's value there is the diagonal entry.

    Args:
        row: the Hessian row reshaped like the input image (any shape ending in ``(H, W)``).
        pixel: ``(row, column)`` of ``p`` in the drawn image (channels stacked vertically).
        output: the output's name, for the title and hover text.

    Returns:
        Spec dict with a heatmap trace ``pixel row`` (``z``: the row as an image) and a scatter
        trace ``chosen pixel`` marking ``p``.

    Example:
        >>> fig = pixel_row_figure(np.eye(3), pixel=(1, 1))
        >>> [t.name for t in fig.data], fig.data[0].z[1].tolist(), fig.data[1].x
        (['pixel row', 'chosen pixel'], [0.0, 1.0, 0.0], (1,))
    """
    z = _image(row, "row")
    r, c = int(pixel[0]), int(pixel[1])
    half = symmetric_range(z)
    hover = (
        f"pixel (row %{{y}}, column %{{x}}): ∂²{output}/∂x_p∂x_j = %{{z:.4g}}"
        f"<extra>p = ({r}, {c})</extra>"
    )
    marker = {
        "type": "scatter",
        "name": "chosen pixel",
        "x": [c],
        "y": [r],
        "mode": "markers",
        "marker": {
            "symbol": "square-open",
            "size": 12,
            "color": "#111111",
            "line": {"width": 2},
        },
        "hovertemplate": f"the chosen pixel p = ({r}, {c})<extra></extra>",
    }
    layout = _image_layout(
        *z.shape,
        f"How pixel ({r}, {c}) interacts with every pixel: ∂²{output}/∂x_p∂x_j"
        f"<br><sup>row {r * z.shape[1] + c} of the Hessian; the square marks p</sup>",
        half,
    )
    return spec([_pixels(z, "pixel row", hover), marker], layout)


def eigenvalues_spec(
    eigenvalues, *, verdict: str, description: str = "", output: str = "y0"
) -> dict:
    """All eigenvalues of one output's Hessian, ascending, as dots coloured by sign.

    For Hessians too large for an eigenvector heatmap (an image's 784 × 784): the dots show how
    many directions curve up (red), down (blue) or not at all (grey).

    Args:
        eigenvalues: ``(n,)`` ascending.
        verdict: ``minimum`` / ``maximum`` / ``saddle`` / ``flat``.
        description: one sentence (from :func:`hessviz.analysis.curvature_verdict`).
        output: the output's name.

    Returns:
        Spec dict with one scatter trace ``eigenvalues`` (``y``: the eigenvalues).

    Example:
        >>> fig = eigenvalues_figure([-1.0, 0.0, 2.0], verdict="saddle")
        >>> fig.data[0].y.tolist(), fig.data[0].marker.color
        ([-1.0, 0.0, 2.0], ('#2c6fbb', '#7f7f7f', '#c0392b'))
    """
    values = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    tol = zero_tolerance(values)
    colours = [POSITIVE if v > tol else NEGATIVE if v < -tol else NEUTRAL for v in values]
    trace = {
        "type": "scatter",
        "name": "eigenvalues",
        "x": np.arange(values.size),
        "y": values,
        "mode": "markers",
        "marker": {"color": colours, "size": 5 if values.size > 64 else 8},
        "hovertemplate": "λ%{x} = %{y:.6g}<extra></extra>",
    }
    layout = {
        "height": 320,
        "title": {
            "text": f"Verdict for {output}: <b>{verdict}</b><br><sup>{description}</sup>",
            "x": 0.0,
            "xanchor": "left",
            "font": {"size": 14},
        },
        "margin": {"l": 60, "r": 20, "t": 80, "b": 45},
        "xaxis": {"title": {"text": "k (eigenvalues in ascending order)"}, "gridcolor": GRID},
        "yaxis": {
            "title": {"text": "λ_k"},
            "zeroline": True,
            "zerolinecolor": "#444444",
            "gridcolor": GRID,
            "exponentformat": "e",
        },
    }
    return spec([trace], layout)


diagonal_image_figure = figure_function(diagonal_image_spec)
pixel_row_figure = figure_function(pixel_row_spec)
eigenvalues_figure = figure_function(eigenvalues_spec)
