"""Panel 5: the function around the point beside its second-order Taylor model.

For two coordinates: contours of ``y_i`` in the plane of ``(x_a, x_b)`` through the point, the
point, the gradient arrow and the principal curvature directions (eigenvectors of the 2 × 2 block
of the Hessian); the Taylor model ``f₀ + gᵀd + ½dᵀHd`` on the same grid and colour scale beside
it. For one input, the same story as curves.
"""

from __future__ import annotations

import numpy as np

from hessviz.analysis import sorted_eigh, zero_tolerance

from ._common import (
    GRID,
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    SCIENTIFIC,
    as_array,
    figure_function,
    fmt,
    spec,
    subplot_title,
)

_DOMAINS = (((0.0, 0.44), (0.0, 1.0)), ((0.52, 0.96), (0.0, 1.0)))


def _arrow(start: np.ndarray, end: np.ndarray, k: int) -> dict:
    """An arrow annotation in data coordinates of subplot ``k`` (1-based)."""
    ref = "" if k == 1 else str(k)
    return {
        "x": float(end[0]),
        "y": float(end[1]),
        "ax": float(start[0]),
        "ay": float(start[1]),
        "xref": f"x{ref}",
        "yref": f"y{ref}",
        "axref": f"x{ref}",
        "ayref": f"y{ref}",
        "showarrow": True,
        "arrowhead": 3,
        "arrowwidth": 2,
        "arrowcolor": "#111111",
        "text": "",
    }


def landscape_spec(
    u,
    v,
    values,
    taylor,
    *,
    point,
    gradient,
    hessian,
    axes: tuple[int, int] = (0, 1),
    output: int = 0,
    part: str = "function",
) -> dict:
    """Contours of the function (left) and of its second-order Taylor model (right) in one plane.

    With ``part="curvature"`` the caller passes the curvature part ``f − f₀ − gᵀd`` (see
    :func:`hessviz.analysis.curvature_part`) and its model ``½dᵀHd`` instead: a steep gradient no
    longer hides the curvature, and no gradient arrow is drawn.

    Args:
        u: ``(p,)`` grid values of ``x_a`` (horizontal axis).
        v: ``(p,)`` grid values of ``x_b`` (vertical axis).
        values: ``(p, p)`` ``y_i`` on the grid; row ``r`` is ``x_b = v[r]``.
        taylor: ``(p, p)`` the Taylor model on the same grid.
        point: ``(2,)`` ``(x_a, x_b)`` of the expansion point.
        gradient: ``(2,)`` ``(∂y_i/∂x_a, ∂y_i/∂x_b)`` at the point.
        hessian: ``(2, 2)`` block of the Hessian for ``(x_a, x_b)``.
        axes: ``(a, b)``, used in labels.
        output: output index ``i``.
        part: ``"function"`` (``values`` is ``f``) or ``"curvature"`` (``values`` is
            ``f − f₀ − gᵀd``).

    Returns:
        Spec dict (``*_figure``: ``go.Figure``) with, per subplot: a contour, the point, and one
        line per principal direction.

    Example:
        >>> g = np.linspace(-1, 1, 5)
        >>> f = g[None, :] ** 2 - g[:, None] ** 2
        >>> H = np.diag([2.0, -2.0])
        >>> fig = landscape_figure(g, g, f, f, point=[0, 0], gradient=[0, 0], hessian=H)
        >>> [t.type for t in fig.data]
        ['contour', 'scatter', 'scatter', 'scatter', 'contour', 'scatter', 'scatter', 'scatter']
    """
    u = as_array(u, 1, "u")
    v = as_array(v, 1, "v")
    values = as_array(values, 2, "values")
    taylor = as_array(taylor, 2, "taylor")
    point = as_array(point, 1, "point")
    gradient = as_array(gradient, 1, "gradient")
    block = as_array(hessian, 2, "hessian")
    a, b = axes
    radius = float(max(u[-1] - u[0], v[-1] - v[0])) / 2
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 1.0, high + 1.0
    contours = {"start": low, "end": high, "size": (high - low) / 16, "showlabels": False}
    curvatures, directions = sorted_eigh(block)
    tol = zero_tolerance(curvatures)
    data: list[dict] = []
    curvature = part == "curvature"
    norm = 0.0 if curvature else float(np.linalg.norm(gradient))
    if curvature:
        titles = (f"y{output} − value − slope (curved part)", "model ½dᵀHd")
        names = (f"y_{output} − f₀ − gᵀd", "½dᵀHd")
    else:
        size = fmt(float(np.linalg.norm(gradient)))
        titles = (
            f"y{output} over (x{a}, x{b}); arrow: gradient, |g| = {size}",
            "Taylor model f₀ + gᵀd + ½dᵀHd",
        )
        names = (f"y_{output}", "Taylor model")
    annotations = [subplot_title(titles[0], _DOMAINS[0]), subplot_title(titles[1], _DOMAINS[1])]
    for k, (grid, name) in enumerate(((values, names[0]), (taylor, names[1])), start=1):
        ref = "" if k == 1 else str(k)
        data.append(
            {
                "type": "contour",
                "name": name,
                "x": u,
                "y": v,
                "z": grid,
                "coloraxis": "coloraxis",
                "autocontour": False,
                "contours": contours,
                "line": {"width": 0.5},
                "hovertemplate": f"x{a} = %{{x:.3f}}<br>x{b} = %{{y:.3f}}<br>{name} = %{{z:.5g}}"
                "<extra></extra>",
                "xaxis": f"x{ref}",
                "yaxis": f"y{ref}",
            }
        )
        data.append(
            {
                "type": "scatter",
                "name": "the point",
                "x": [float(point[0])],
                "y": [float(point[1])],
                "mode": "markers",
                "marker": {"size": 10, "color": "#111111", "symbol": "x"},
                "hovertemplate": f"x{a} = %{{x:.3f}}, x{b} = %{{y:.3f}}<extra>point</extra>",
                "xaxis": f"x{ref}",
                "yaxis": f"y{ref}",
                "showlegend": False,
            }
        )
        for c in range(2):
            kappa = float(curvatures[c])
            colour = POSITIVE if kappa > tol else NEGATIVE if kappa < -tol else NEUTRAL
            ends = np.outer([-0.7 * radius, 0.7 * radius], directions[:, c]) + point
            data.append(
                {
                    "type": "scatter",
                    "name": f"principal direction {c}: κ = {fmt(kappa)}",
                    "x": ends[:, 0],
                    "y": ends[:, 1],
                    "mode": "lines",
                    "line": {"color": colour, "width": 3, "dash": "solid" if c else "dash"},
                    "hovertemplate": f"curvature κ{c} = {fmt(kappa, 4)}<extra></extra>",
                    "xaxis": f"x{ref}",
                    "yaxis": f"y{ref}",
                    "showlegend": k == 1,
                }
            )
        if norm > 0:
            tip = point + 0.6 * radius * gradient / norm
            annotations.append(_arrow(point, tip, k))
    layout: dict = {
        "height": 420,
        "showlegend": True,
        "legend": {"orientation": "h", "y": -0.2, "x": 0.0, "yanchor": "top"},
        "margin": {"l": 50, "r": 30, "t": 60, "b": 90},
        "coloraxis": {
            "colorscale": "Cividis",
            "cmin": low,
            "cmax": high,
            "colorbar": {
                "x": 0.98,
                "thickness": 12,
                "len": 0.9,
                **SCIENTIFIC,
                "title": {"text": "f − f₀ − gᵀd" if curvature else f"y{output}"},
            },
        },
        "annotations": annotations,
    }
    for k, (x_domain, y_domain) in enumerate(_DOMAINS, start=1):
        ref = "" if k == 1 else str(k)
        layout[f"xaxis{ref}"] = {
            "domain": list(x_domain),
            "anchor": f"y{ref}",
            "title": {"text": f"x{a}"},
            "range": [float(u[0]), float(u[-1])],
            "constrain": "domain",
        }
        layout[f"yaxis{ref}"] = {
            "domain": list(y_domain),
            "anchor": f"x{ref}",
            "title": {"text": f"x{b}"},
            "range": [float(v[0]), float(v[-1])],
            "scaleanchor": f"x{ref}",
            "scaleratio": 1,
            "constrain": "domain",
        }
    return spec(data, layout)


def profile_spec(
    t,
    values,
    taylor,
    *,
    point: float,
    gradient: float,
    curvature: float,
    output: int = 0,
    part: str = "function",
) -> dict:
    """One input: ``y_i(x₀)`` along the line beside the Taylor parabola, with the point marked.

    Args:
        t: ``(p,)`` values of ``x₀``.
        values: ``(p,)`` ``y_i`` at ``t``.
        taylor: ``(p,)`` the Taylor model ``f₀ + g d + ½ h d²`` at ``t``.
        point: the expansion point ``x₀``.
        gradient: ``dy_i/dx₀`` at the point.
        curvature: ``d²y_i/dx₀²`` at the point.
        output: output index ``i``.
        part: ``"function"``, or ``"curvature"`` when ``values`` is ``f − f₀ − g d`` and
            ``taylor`` is ``½ h d²``.

    Returns:
        Spec dict (``*_figure``: ``go.Figure``) with three traces: function, Taylor model, point.

    Example:
        >>> t = np.linspace(-1, 1, 5)
        >>> fig = profile_figure(t, t**2, t**2, point=0.0, gradient=0.0, curvature=2.0)
        >>> [d.name for d in fig.data]
        ['y_0', 'Taylor model', 'the point']
    """
    t = as_array(t, 1, "t")
    values = as_array(values, 1, "values")
    taylor = as_array(taylor, 1, "taylor")
    at_point = float(np.interp(point, t, values))
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    pad = max(0.25 * (high - low), 1e-3)
    curved = part == "curvature"
    data = [
        {
            "type": "scatter",
            "name": f"y_{output} − f₀ − g·d" if curved else f"y_{output}",
            "x": t,
            "y": values,
            "mode": "lines",
            "line": {"color": "#1f77b4", "width": 3},
        },
        {
            "type": "scatter",
            "name": "½·h·d²" if curved else "Taylor model",
            "x": t,
            "y": taylor,
            "mode": "lines",
            "line": {"color": "#ff7f0e", "width": 2, "dash": "dash"},
        },
        {
            "type": "scatter",
            "name": "the point",
            "x": [float(point)],
            "y": [at_point],
            "mode": "markers",
            "marker": {"size": 10, "color": "#111111"},
        },
    ]
    layout = {
        "height": 360,
        "showlegend": True,
        "title": {
            "text": f"y_{output} along x0: slope {fmt(gradient)}, curvature {fmt(curvature)}",
            "x": 0.0,
            "xanchor": "left",
        },
        "xaxis": {"gridcolor": GRID, "title": {"text": "x0"}},
        "yaxis": {
            "gridcolor": GRID,
            "title": {"text": f"y_{output}"},
            "range": [low - pad, high + pad],
        },
        "margin": {"l": 60, "r": 30, "t": 60, "b": 50},
    }
    return spec(data, layout)


landscape_figure = figure_function(landscape_spec)


profile_figure = figure_function(profile_spec)
