"""Plotly figures for the explorer: pure functions from numpy arrays to ``go.Figure``.

Nothing here differentiates anything or touches widgets: the engine (``hessviz``) computes, these
functions draw, and ``hessviz.widgets`` wires the two together. Every panel comes as ``X_figure``
(a ``go.Figure``) and ``X_spec`` (the same figure as plain dicts, which the explorer diffs to
update its long-lived FigureWidgets in place). Matrices are drawn like matrices
(row 0 on top, square cells) with diverging colour scales centred at 0.
"""

from ._common import to_figure
from .curvature import (
    VERDICTS,
    CurvatureVerdict,
    curvature_verdict,
    plane_points,
    sorted_eigh,
    taylor_model,
    zero_tolerance,
)
from .diagonal import relative_error, second_order_jacobian_figure, second_order_jacobian_spec
from .fd_error import V_SHAPE_EXPLANATION, fd_error_figure, fd_error_spec
from .hessian import hessian_figure, hessian_hover, hessian_spec
from .images import (
    diagonal_image_figure,
    diagonal_image_spec,
    eigenvalues_figure,
    eigenvalues_spec,
    pixel_row_figure,
    pixel_row_spec,
)
from .landscape import landscape_figure, landscape_spec, profile_figure, profile_spec
from .layers import layer_terms_figure, layer_terms_spec, vanishing_explanation
from .model import (
    diagonals_figure,
    diagonals_spec,
    node_terms_figure,
    node_terms_spec,
    with_names,
)
from .race import RaceEntry, race_figure, race_spec
from .spectrum import spectrum_figure, spectrum_spec

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
    # the same panels as plain {"data", "layout"} dicts (fast to build and compare)
    "hessian_spec",
    "second_order_jacobian_spec",
    "spectrum_spec",
    "layer_terms_spec",
    "landscape_spec",
    "profile_spec",
    "fd_error_spec",
    "race_spec",
    # panels of HessianExplorer.for_model (a user's model; images drawn as images)
    "diagonal_image_figure",
    "diagonal_image_spec",
    "pixel_row_figure",
    "pixel_row_spec",
    "eigenvalues_figure",
    "eigenvalues_spec",
    "diagonals_figure",
    "diagonals_spec",
    "node_terms_figure",
    "node_terms_spec",
    "with_names",
    "to_figure",
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
