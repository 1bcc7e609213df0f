"""Panel 1: the exact Hessian of one output beside its finite-difference estimate and their gap."""

from __future__ import annotations

import numpy as np

from hessviz.analysis import scientific

from ._common import (
    MAX_N_WITH_VALUES,
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


def hessian_hover(output: int, source: str) -> str:
    """Hover text of a Hessian cell: ``∂²y_i/∂x_j∂x_k = value`` (``j`` = row, ``k`` = column)."""
    return f"∂²y_{output}/∂x_%{{y}}∂x_%{{x}} = %{{z:.6g}}<extra>{source}</extra>"


def hessian_spec(
    exact,
    fd,
    *,
    output: int = 0,
    step: float | None = None,
    show_values: bool | None = None,
    noise_floor: float | None = None,
) -> dict:
    """Exact | finite-difference | |exact − FD| heatmaps of one output's Hessian.

    The first two panels share one diverging colour axis centred at 0 (``coloraxis``), its range
    set by the exact values and the FD values above ``noise_floor``; the third shows the absolute
    gap on a log colour axis (``coloraxis2``; its hover prints the raw value). FD cells whose
    magnitude is below ``noise_floor`` are covered by a grey "noise" cell (a fourth trace): they
    are round-off, not curvature. Rows are drawn top-down like a matrix and cells are square.

    Args:
        exact: ``(n, n)`` exact Hessian ∂²y_i/∂x_j∂x_k of output ``i = output``.
        fd: ``(n, n)`` finite-difference estimate of the same matrix.
        output: index ``i`` of the output, used in titles and hover text.
        step: the finite-difference step, shown in the FD title.
        show_values: print values in the cells; default: when ``n ≤ 6``.
        noise_floor: FD values below this magnitude are round-off
            (:func:`hessviz.analysis.fd_noise_floor`); ``None``: no noise marking.

    Returns:
        Spec dict (``*_figure``: ``go.Figure``) with 3 heatmap traces (exact, FD, error) in that
        order, and a 4th (``noise``) when some FD cell is below the noise floor.

    Example:
        >>> fig = hessian_figure(np.eye(2), np.eye(2) + 1e-9)
        >>> [t.name for t in fig.data], fig.data[0].z.shape
        (['exact', 'FD', '|exact − FD|'], (2, 2))
    """
    exact = as_array(exact, 2, "exact")
    fd = as_array(fd, 2, "fd")
    n = exact.shape[0]
    if show_values is None:
        show_values = n <= MAX_N_WITH_VALUES
    labels = [f"x{j}" for j in range(n)]
    gap = np.abs(exact - fd)
    logs, low, high, colorbar = log_error_grid(gap)
    half = honest_range(exact, fd, floor=noise_floor)
    domains = grid_domains(3, hgap=0.06, top=0.97, bottom=0.14)
    step_text = f"<br>h = {scientific(step)}" if step is not None else ""
    noisy = np.abs(fd) <= noise_floor if noise_floor is not None else np.zeros(fd.shape, bool)
    if noisy.all():
        step_text += " · all noise"
    elif noisy.any():
        step_text += " · grey: noise"
    data = [
        heatmap(
            1,
            exact,
            name="exact",
            hover=hessian_hover(output, "exact"),
            coloraxis="coloraxis",
            text=cell_text(exact, show_values),
        ),
        heatmap(
            2,
            fd,
            name="FD",
            hover=hessian_hover(output, "finite differences"),
            coloraxis="coloraxis",
            text=cell_text(fd, show_values),
        ),
        heatmap(
            3,
            logs,
            name="|exact − FD|",
            hover=(
                f"|exact − FD| of ∂²y_{output}/∂x_%{{y}}∂x_%{{x}} = %{{customdata:.3g}}"
                "<extra></extra>"
            ),
            coloraxis="coloraxis2",
            text=cell_text(gap, show_values, digits=1),
            customdata=gap,
        ),
    ]
    if noisy.any():
        data.append(noise_overlay(2, noisy, float(noise_floor), label=show_values))
    layout: dict = {
        "height": 380,
        **value_and_error_axes(half, low, high, colorbar, domains),
        "annotations": [
            subplot_title(f"exact ∂²y_{output}/∂x²", domains[0]),
            subplot_title(f"finite differences{step_text}", domains[1]),
            subplot_title(
                f"gap |exact − FD|<br>max {fmt(float(gap.max()), 2)}"
                + (" (round-off)" if noise_floor is not None and gap.max() <= noise_floor else ""),
                domains[2],
            ),
        ],
    }
    for k, domain in enumerate(domains, start=1):
        layout.update(matrix_axes(k, domain, labels, labels, show_row_labels=k == 1))
    return spec(data, layout)


hessian_figure = figure_function(hessian_spec)
