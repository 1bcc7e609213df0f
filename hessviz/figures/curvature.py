"""The numpy readers of a Hessian, re-exported from :mod:`hessviz.analysis` (the compute layer).

Kept so that ``hessviz.figures.sorted_eigh`` and friends still work; new code imports them from
:mod:`hessviz.analysis`.
"""

from hessviz.analysis import (
    VERDICTS,
    CurvatureVerdict,
    curvature_verdict,
    plane_points,
    sorted_eigh,
    taylor_model,
    zero_tolerance,
)

__all__ = [
    "VERDICTS",
    "CurvatureVerdict",
    "curvature_verdict",
    "plane_points",
    "sorted_eigh",
    "taylor_model",
    "zero_tolerance",
]
