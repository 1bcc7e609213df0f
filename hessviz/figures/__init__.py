"""Plotly figures for the explorer: pure functions from numpy arrays to ``go.Figure``.

Nothing here differentiates anything or touches widgets: the engine (``hessviz``) computes, these
functions draw, and ``hessviz.widgets`` wires the two together. Matrices are drawn like matrices
(row 0 on top, square cells) with diverging colour scales centred at 0.
"""

from .curvature import (
    VERDICTS,
    CurvatureVerdict,
    curvature_verdict,
    plane_points,
    sorted_eigh,
    taylor_model,
    zero_tolerance,
)
from .diagonal import relative_error, second_order_jacobian_figure
from .fd_error import V_SHAPE_EXPLANATION, fd_error_figure
from .hessian import hessian_figure, hessian_hover
from .landscape import landscape_figure, profile_figure
from .layers import layer_terms_figure, vanishing_explanation
from .race import RaceEntry, race_figure
from .spectrum import spectrum_figure

__all__ = [
    # panels
    "hessian_figure",
    "second_order_jacobian_figure",
    "spectrum_figure",
    "layer_terms_figure",
    "landscape_figure",
    "profile_figure",
    "fd_error_figure",
    "race_figure",
    "RaceEntry",
    # reading a Hessian
    "CurvatureVerdict",
    "VERDICTS",
    "curvature_verdict",
    "sorted_eigh",
    "zero_tolerance",
    "plane_points",
    "taylor_model",
    # text
    "V_SHAPE_EXPLANATION",
    "hessian_hover",
    "relative_error",
    "vanishing_explanation",
]
