"""Small numpy helpers that read a Hessian: spectrum, verdict, principal directions, Taylor model.

They turn engine results into what the panels show; they compute no derivatives themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The four verdicts, in the order a legend lists them.
VERDICTS = ("minimum", "maximum", "saddle", "flat")


@dataclass(frozen=True)
class CurvatureVerdict:
    """What the eigenvalues of a Hessian say about the local shape.

    Attributes:
        kind: one of :data:`VERDICTS`. It describes the curvature only: the point is a true
            minimum/maximum only where the gradient vanishes too.
        description: one sentence for the panel.
        positive / negative / zero: how many eigenvalues fall in each class.
    """

    kind: str
    description: str
    positive: int
    negative: int
    zero: int


def sorted_eigh(hessian) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and unit eigenvectors (columns) of a symmetric matrix.

    The sign of each eigenvector is fixed (its largest-magnitude entry is positive) so that the
    picture does not flicker between updates. The matrix is symmetrised first, so round-off
    asymmetry in the input does not matter.

    Args:
        hessian: ``(n, n)`` array.

    Returns:
        ``(eigenvalues (n,), eigenvectors (n, n))`` with ``H @ V[:, k] = λ_k V[:, k]``.

    Example:
        >>> values, vectors = sorted_eigh([[2.0, 0.0], [0.0, -1.0]])
        >>> values.tolist(), vectors[:, 0].tolist()  # λ = -1 along x1
        ([-1.0, 2.0], [0.0, 1.0])
    """
    matrix = np.asarray(hessian, dtype=np.float64)
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    pivots = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[pivots, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return values, vectors * signs


def zero_tolerance(eigenvalues, *, rtol: float = 1e-10, atol: float = 1e-12) -> float:
    """Below this magnitude an eigenvalue counts as zero: ``max(atol, rtol · max|λ|)``."""
    values = np.abs(np.asarray(eigenvalues, dtype=np.float64))
    top = float(values.max()) if values.size else 0.0
    return max(atol, rtol * top)


def curvature_verdict(eigenvalues, *, rtol: float = 1e-10, atol: float = 1e-12) -> CurvatureVerdict:
    """Classify the local curvature from the Hessian's eigenvalues.

    ``minimum``: no negative eigenvalue (curves up, or stays flat, in every direction);
    ``maximum``: no positive one; ``saddle``: both signs; ``flat``: all zero within
    :func:`zero_tolerance` (e.g. a ReLU or linear network).

    Args:
        eigenvalues: ``(n,)`` eigenvalues of a symmetric Hessian.
        rtol, atol: zero tolerance, see :func:`zero_tolerance` (pass a larger ``rtol`` for float32).

    Example:
        >>> curvature_verdict([-1.0, 2.0]).kind, curvature_verdict([0.0, 0.0]).kind
        ('saddle', 'flat')
        >>> curvature_verdict([0.0, 3.0]).description
        'minimum-like: curves up along 1 direction and is flat along 1 (positive semidefinite)'
    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    tol = zero_tolerance(values, rtol=rtol, atol=atol)
    positive = int((values > tol).sum())
    negative = int((values < -tol).sum())
    zero = int(values.size - positive - negative)

    def directions(count: int) -> str:
        return f"{count} direction{'s' if count != 1 else ''}"

    flat_tail = f" and is flat along {zero}" if zero else ""
    if positive and negative:
        kind = "saddle"
        description = (
            f"saddle: curves up along {directions(positive)}, down along {directions(negative)}"
            + (f", flat along {zero}" if zero else "")
        )
    elif positive:
        kind = "minimum"
        definite = "positive semidefinite" if zero else "positive definite"
        description = (
            f"minimum-like: curves up along {directions(positive)}{flat_tail} ({definite})"
        )
    elif negative:
        kind = "maximum"
        definite = "negative semidefinite" if zero else "negative definite"
        description = (
            f"maximum-like: curves down along {directions(negative)}{flat_tail} ({definite})"
        )
    else:
        kind = "flat"
        description = "flat: every eigenvalue is zero, the function is locally linear"
    return CurvatureVerdict(kind, description, positive, negative, zero)


def plane_points(center, i: int, j: int, *, radius: float, points: int) -> tuple:
    """A square grid in the plane of coordinates ``i`` and ``j`` through ``center``.

    Args:
        center: ``(n,)`` the point.
        i, j: the two coordinates that vary (``i`` along the horizontal axis).
        radius: half-width of the square.
        points: grid points per side.

    Returns:
        ``(u, v, inputs)``: ``u (points,)`` values of ``x_i``, ``v (points,)`` values of ``x_j``,
        ``inputs (points, points, n)`` with ``inputs[r, c] = center`` except
        ``x_i = u[c]``, ``x_j = v[r]`` (row ``r`` is one ``v``, as contour ``z`` expects).

    Example:
        >>> u, v, inputs = plane_points([0.0, 0.0, 5.0], 0, 1, radius=1.0, points=3)
        >>> inputs.shape, inputs[0, 2].tolist()
        ((3, 3, 3), [1.0, -1.0, 5.0])
    """
    center = np.asarray(center, dtype=np.float64)
    u = center[i] + np.linspace(-radius, radius, points)
    v = center[j] + np.linspace(-radius, radius, points)
    inputs = np.broadcast_to(center, (points, points, center.size)).copy()
    inputs[:, :, i] = u[None, :]
    inputs[:, :, j] = v[:, None]
    return u, v, inputs


def taylor_model(displacements, value: float, gradient, hessian) -> np.ndarray:
    """The second-order Taylor model ``f₀ + gᵀd + ½ dᵀHd`` at each displacement ``d``.

    Args:
        displacements: ``(..., k)`` displacements from the expansion point.
        value: ``f₀``, the function value at the point.
        gradient: ``(k,)``.
        hessian: ``(k, k)``.

    Returns:
        ``(...)`` model values.

    Example:
        >>> taylor_model([[1.0, 0.0], [0.0, 2.0]], 1.0, [1.0, 0.0], [[2.0, 0.0], [0.0, -1.0]])
        array([ 3., -1.])
    """
    d = np.asarray(displacements, dtype=np.float64)
    g = np.asarray(gradient, dtype=np.float64)
    h = np.asarray(hessian, dtype=np.float64)
    return value + d @ g + 0.5 * np.einsum("...j,jk,...k->...", d, h, d)
