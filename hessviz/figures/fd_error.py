"""Panel 6: the error of finite differences against the step, in float32 and float64."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hessviz.analysis import read_fd_error

from ._common import GRID, SERIES, as_array, figure_function, fmt, note_annotation, spec

#: The textbook explanation of the V shape (the caption itself is read off the curves by
#: :func:`hessviz.analysis.read_fd_error`).
V_SHAPE_EXPLANATION = (
    "Right of the dip the error is truncation (the Taylor remainder, ∝ h²); left of it round-off "
    "takes over (about ε·|f|/h², so it explodes as h shrinks, far sooner in float32 with "
    "ε ≈ 1e-7 than in float64 with ε ≈ 2e-16); the best step balances the two near ε^¼."
)


def fd_error_spec(
    steps,
    errors: Mapping[str, np.ndarray],
    *,
    chosen_step: float,
    best_steps: Mapping[str, float] | None = None,
    output: int = 0,
    note: str | None = None,
) -> dict:
    """Log-log curves of ``max|FD(h) − exact|`` against the step ``h``, one per precision.

    The caption under the plot says what the curves show (round-off, truncation, kinks,
    precision), as read by :func:`hessviz.analysis.read_fd_error`, unless ``note`` is given.

    Args:
        steps: ``(s,)`` increasing positive steps.
        errors: precision label (``"float32"``, ``"float64"``) → ``(s,)`` max abs errors. Exact
            zeros cannot be drawn on a log axis and are left as gaps.
        chosen_step: the explorer's current step, drawn as a vertical dashed line.
        best_steps: precision label → rule-of-thumb step ``ε^¼``, drawn as open markers.
        output: output index ``i`` (for the axis title).
        note: the caption; default: ``read_fd_error(steps, errors, chosen_step=…).text``.

    Returns:
        Spec dict (``*_figure``: ``go.Figure``) with one ``lines+markers`` trace per precision
        (named by the label), one marker trace per best step, and a dashed vertical line trace at
        the chosen step (last).

    Example:
        >>> h = np.logspace(-8, 0, 5)
        >>> fig = fd_error_figure(h, {"float64": 1e-16 / h**2 + h**2}, chosen_step=1e-4)
        >>> fig.data[0].name, fig.layout.xaxis.type
        ('float64', 'log')
    """
    steps = as_array(steps, 1, "steps")
    data: list[dict] = []
    all_positive: list[np.ndarray] = []
    for k, (label, curve) in enumerate(errors.items()):
        curve = as_array(curve, 1, label)
        shown = np.where((curve > 0) & np.isfinite(curve), curve, np.nan)
        all_positive.append(shown[np.isfinite(shown)])
        data.append(
            {
                "type": "scatter",
                "name": label,
                "x": steps,
                "y": shown,
                "mode": "lines+markers",
                "line": {"color": SERIES[k % len(SERIES)], "width": 2},
                "marker": {"size": 6},
                "hovertemplate": f"{label}: h = %{{x:.2e}}, max|FD − exact| = %{{y:.3g}}"
                "<extra></extra>",
            }
        )
    for k, (label, step) in enumerate((best_steps or {}).items()):
        if label not in errors:
            continue
        curve = as_array(errors[label], 1, label)
        y = float(np.exp(np.interp(np.log(step), np.log(steps), np.log(np.maximum(curve, 1e-300)))))
        data.append(
            {
                "type": "scatter",
                "name": f"ε^¼ rule ({label}): h = {fmt(step, 2)}",
                "x": [step],
                "y": [y],
                "mode": "markers",
                "marker": {
                    "size": 13,
                    "symbol": "circle-open",
                    "color": SERIES[k % len(SERIES)],
                    "line": {"width": 2},
                },
                "hovertemplate": f"rule of thumb ε^¼ for {label}: h = %{{x:.2e}}<extra></extra>",
            }
        )
    values = np.concatenate(all_positive) if all_positive else np.array([])
    if values.size:
        low, high = np.log10(values.min()) - 0.5, np.log10(values.max()) + 0.5
    else:
        low, high = -17.0, 0.0
    data.append(
        {
            "type": "scatter",
            "name": f"chosen h = {fmt(chosen_step, 2)}",
            "x": [chosen_step, chosen_step],
            "y": [10.0**low, 10.0**high],
            "mode": "lines",
            "line": {"color": "#d62728", "dash": "dash", "width": 2},
            "hovertemplate": "chosen step h = %{x:.2e}<extra></extra>",
        }
    )
    if note is None:
        note = (
            read_fd_error(steps, errors, chosen_step=chosen_step).text
            if values.size
            else (
                "Finite differences are exact here at every step (all errors are 0), as for any "
                "network whose Hessian vanishes."
            )
        )
    layout = {
        "height": 400,
        "showlegend": True,
        "legend": {"x": 1.01, "y": 1.0},
        "title": {"text": f"Finite-difference error of ∂²y_{output}/∂x² vs step", "x": 0.0},
        "xaxis": {
            "gridcolor": GRID,
            "type": "log",
            "title": {"text": "step h"},
            "exponentformat": "e",
        },
        "yaxis": {
            "gridcolor": GRID,
            "type": "log",
            "title": {"text": "max |FD − exact|"},
            "range": [low, high],
            "exponentformat": "e",
        },
        "annotations": [note_annotation(note, y=-0.2, width=110)] if note else [],
        "margin": {"l": 60, "r": 30, "t": 60, "b": 110 if note else 50},
    }
    return spec(data, layout)


fd_error_figure = figure_function(fd_error_spec)
