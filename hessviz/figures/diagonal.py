"""Panel 2: the second-order Jacobian (all outputs' Hessian diagonals): exact, FD and Hutchinson."""

from __future__ import annotations

import numpy as np

from ._common import (
    as_array,
    cell_text,
    figure_function,
    fmt,
    grid_domains,
    heatmap,
    honest_range,
    log_error_grid,
    matrix_axes,
    noise_overlay,
    spec,
    subplot_title,
    value_and_error_axes,
)


def relative_error(estimate: np.ndarray, reference: np.ndarray) -> float:
    """``max|estimate − reference| / max|reference|`` (the absolute error when the reference is 0).

    Example:
        >>> round(relative_error(np.array([1.1, 2.0]), np.array([1.0, 2.0])), 12)  # 0.1 / 2
        0.05
    """
    top = float(np.abs(reference).max()) if reference.size else 0.0
    gap = float(np.abs(estimate - reference).max()) if reference.size else 0.0
    return gap / top if top > 0 else gap


def second_order_jacobian_spec(
    exact,
    fd,
    hutchinson,
    *,
    samples: int,
    show_values: bool | None = None,
    noise_floor: float | None = None,
) -> dict:
    """Exact | FD | Hutchinson | |Hutchinson − exact| heatmaps of the second-order Jacobian.

    Entry ``(i, j)`` is ∂²y_i/∂x_j², the diagonal of output ``i``'s Hessian. The first three panels
    share one diverging colour axis centred at 0; the last shows Hutchinson's error on a log scale
    (its title gives the relative error, which shrinks like 1/√samples).

    Args:
        exact: ``(m, n)`` exact diagonals (the ``m × n`` second-order Jacobian).
        fd: ``(m, n)`` finite-difference diagonals.
        hutchinson: ``(m, n)`` Hutchinson estimates ``mean_s v_s ⊙ (H v_s)``.
        samples: number of probe vectors used by the estimator.
        show_values: print values in cells; default when ``n ≤ 4`` (the cells are small).
        noise_floor: FD values below this magnitude are round-off and shown as grey "noise"
            cells (a 5th trace); they do not stretch the shared colour scale.

    Returns:
        Spec dict (``*_figure``: ``go.Figure``) with 4 heatmap traces: exact, FD, Hutchinson,
        Hutchinson error (and ``noise`` when some FD cell is below the floor).

    Example:
        >>> d = np.array([[1.0, -2.0]])
        >>> fig = second_order_jacobian_figure(d, d, d * 1.1, samples=8)
        >>> [t.name for t in fig.data]
        ['exact', 'FD', 'Hutchinson', '|Hutchinson − exact|']
    """
    exact = as_array(exact, 2, "exact")
    fd = as_array(fd, 2, "fd")
    hutchinson = as_array(hutchinson, 2, "hutchinson")
    m, n = exact.shape
    if show_values is None:
        show_values = n <= 4
    rows = [f"y{i}" for i in range(m)]
    cols = [f"x{j}" for j in range(n)]
    gap = np.abs(hutchinson - exact)
    logs, low, high, colorbar = log_error_grid(gap)
    half = honest_range(np.concatenate([exact, hutchinson]), fd, floor=noise_floor)
    noisy = np.abs(fd) <= noise_floor if noise_floor is not None else np.zeros(fd.shape, bool)
    plot_height = 110 + 34 * m  # pixels between the margins (layout height below)
    domains = grid_domains(4, hgap=0.05, bottom=48 / plot_height)
    hover = "∂²y_%{{y}}/∂x_%{{x}}² = %{{z:.6g}}<extra>{}</extra>"
    data = [
        heatmap(
            1,
            exact,
            name="exact",
            hover=hover.format("exact"),
            coloraxis="coloraxis",
            text=cell_text(exact, show_values, digits=2),
        ),
        heatmap(
            2,
            fd,
            name="FD",
            hover=hover.format("finite differences"),
            coloraxis="coloraxis",
            text=cell_text(fd, show_values, digits=2),
        ),
        heatmap(
            3,
            hutchinson,
            name="Hutchinson",
            hover=hover.format(f"Hutchinson, {samples} samples"),
            coloraxis="coloraxis",
            text=cell_text(hutchinson, show_values, digits=2),
        ),
        heatmap(
            4,
            logs,
            name="|Hutchinson − exact|",
            hover="|Hutchinson − exact| at (y_%{y}, x_%{x}) = %{customdata:.3g}<extra></extra>",
            coloraxis="coloraxis2",
            text=cell_text(gap, show_values, digits=1),
            customdata=gap,
        ),
    ]
    if noisy.any():
        data.append(noise_overlay(2, noisy, float(noise_floor), label=show_values))
    fd_error = relative_error(fd, exact)
    hutchinson_error = relative_error(hutchinson, exact)
    layout: dict = {
        "height": plot_height + 130,
        "margin": {"l": 50, "r": 30, "t": 110, "b": 20},
        **value_and_error_axes(half, low, high, colorbar, domains),
        "annotations": [
            subplot_title("exact<br>∂²y_i/∂x_j²", domains[0]),
            subplot_title(
                "finite differences<br>"
                + ("all noise" if noisy.all() else f"rel. err {fmt(fd_error, 2)}"),
                domains[1],
            ),
            subplot_title(f"Hutchinson<br>{samples} samples", domains[2]),
            subplot_title(
                f"|Hutchinson − exact|<br>rel. err {fmt(hutchinson_error, 2)}", domains[3]
            ),
        ],
    }
    for k, domain in enumerate(domains, start=1):
        layout.update(matrix_axes(k, domain, rows, cols, show_row_labels=k == 1))
    return spec(data, layout)


second_order_jacobian_figure = figure_function(second_order_jacobian_spec)
