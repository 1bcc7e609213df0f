"""Reading a Hessian and its estimates: spectrum and verdict, Taylor model, FD error, timing.

The compute layer's analysis, shared by the explorer, the figures and the notebooks. It imports
numpy (and torch inside the functions that evaluate a model), never plotting or widget code: the
figures draw what these functions return, and the explorer's status line and captions say it in
words.

- :func:`sorted_eigh`, :func:`curvature_verdict`: eigen-decomposition, saddle/min/max verdict.
- :func:`taylor_model`, :func:`curvature_part`, :func:`plane_points`: the second-order model.
- :func:`fd_noise_floor`: below this size a finite-difference second derivative is round-off.
- :func:`fd_error_sweep`, :func:`read_fd_error`: the error against the step, and what it shows.
- :func:`term_shares`: each layer term's share of the Hessian.
- :func:`median_seconds`: timing of one call.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# -- spectrum and verdict -------------------------------------------------------------------------

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


# -- the second-order model -----------------------------------------------------------------------


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


def curvature_part(values, displacements, value: float, gradient) -> np.ndarray:
    """``f − f₀ − gᵀd``: what is left of the function once its value and slope are taken away.

    Near the point this is ``½ dᵀHd`` plus higher orders; it shows the curvature that a large
    gradient hides in a plot of ``f`` itself.

    Args:
        values: ``(...)`` the function at the displacements.
        displacements: ``(..., k)``.
        value: ``f₀``.
        gradient: ``(k,)``.

    Example:
        >>> d = np.array([[1.0], [-2.0]])
        >>> curvature_part(3 + 2 * d[:, 0] + d[:, 0] ** 2, d, 3.0, [2.0]).tolist()
        [1.0, 4.0]
    """
    d = np.asarray(displacements, dtype=np.float64)
    return np.asarray(values, dtype=np.float64) - value - d @ np.asarray(gradient, np.float64)


# -- finite differences: noise floor, error sweep and what it shows --------------------------------

#: Safety factor of :func:`fd_noise_floor` over the bare ``ε·|f|/h²``.
NOISE_FACTOR = 10.0


def fd_noise_floor(value_scale: float, eps: float, step: float) -> float:
    """The size below which a central-difference second derivative is round-off, not curvature.

    Each of the stencil's function values carries a rounding error of about ``ε·|f|``; divided
    by ``h²`` that is the noise of the estimate. The floor is ``10·ε·max(|f|, 1)/h²``.

    Args:
        value_scale: typical ``|f|`` near the point (e.g. ``max|f(x)|`` over the outputs).
        eps: machine epsilon of the precision the differences were taken in.
        step: the step ``h``.

    Example:
        >>> f"{fd_noise_floor(0.5, 2.2e-16, 1e-4):.1e}"  # float64, h = 1e-4
        '2.2e-07'
    """
    return NOISE_FACTOR * eps * max(abs(value_scale), 1.0) / step**2


@dataclass(frozen=True)
class FDCurveReading:
    """What one error-vs-step curve shows (see :func:`read_fd_error`).

    Attributes:
        label: the precision (``"float64"``).
        best_step, best_error: where the curve is lowest, and how low.
        roundoff: the error grows as the step shrinks left of the best step (slope ≤ −1).
        truncation: it grows smoothly (slope ≥ 1) right of it.
        kinks: it jumps (a local slope ≥ 4) right of it: the stencil crosses a kink.
        exact: every error is exactly zero.
    """

    label: str
    best_step: float
    best_error: float
    roundoff: bool
    truncation: bool
    kinks: bool
    exact: bool


@dataclass(frozen=True)
class FDErrorReading:
    """The readings of all curves and a caption in words.

    Attributes:
        curves: precision → :class:`FDCurveReading`.
        regime: where the chosen step lies on the curve of ``dtype``: ``"round-off"``,
            ``"best"``, ``"truncation"``, ``"kinks"`` or ``"exact"``.
        text: the caption (plain sentences).
    """

    curves: dict[str, FDCurveReading]
    regime: str
    text: str


def _slope(steps: np.ndarray, errors: np.ndarray) -> float:
    """Least-squares slope of ``log error`` against ``log step`` (nan with < 2 positive points)."""
    keep = errors > 0
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log10(steps[keep]), np.log10(errors[keep]), 1)[0])


def read_curve(label: str, steps, errors) -> FDCurveReading:
    """Read one error-vs-step curve: best step, and which errors dominate on either side.

    Example:
        >>> h = np.logspace(-8, 0, 9)
        >>> r = read_curve("float64", h, 1e-16 / h**2 + h**2)
        >>> r.best_step, r.roundoff, r.truncation, r.kinks
        (0.0001, True, True, False)
    """
    steps = np.asarray(steps, dtype=np.float64)
    errors = np.nan_to_num(np.asarray(errors, dtype=np.float64), nan=np.inf)
    if not np.any(errors > 0):
        return FDCurveReading(label, float(steps[-1]), 0.0, False, False, False, True)
    # An exact zero at a tiny step means x ± h rounded back to x (nothing was differenced), not
    # a perfect estimate: the best step is the lowest positive error.
    best = int(np.argmin(np.where(errors > 0, errors, np.inf)))
    left, right = errors[: best + 1], errors[best:]
    local = np.diff(np.log10(np.maximum(right, 1e-300))) / np.diff(np.log10(steps[best:]))
    kinks = bool(local.size and local.max() >= 4.0 and right.max() > 1e3 * max(right[0], 1e-300))
    right_slope = _slope(steps[best:], right)
    return FDCurveReading(
        label=label,
        best_step=float(steps[best]),
        best_error=float(errors[best]),
        roundoff=bool(best > 0 and _slope(steps[: best + 1], left) <= -1.0),
        truncation=bool(not kinks and best < steps.size - 1 and right_slope >= 1.0),
        kinks=kinks,
        exact=False,
    )


def scientific(value: float) -> str:
    """``1.2e-9``-style number for captions and status lines (never SI prefixes).

    Example:
        >>> scientific(1.234e-9), scientific(0.00012), scientific(25000.0), scientific(0.0)
        ('1.2e-9', '1.2e-4', '2.5e4', '0')
    """
    if value == 0:
        return "0"
    return f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")


def read_fd_error(
    steps, errors: Mapping[str, np.ndarray], *, chosen_step: float, dtype: str = "float64"
) -> FDErrorReading:
    """What the finite-difference error curves show, in words: which error dominates where.

    Round-off (the error grows as ``h`` shrinks, like ``ε/h²``), truncation (it grows smoothly
    with ``h``, like ``h²``), kinks (it jumps once the stencil ``x ± h`` reaches a point where the
    function is not smooth, e.g. a ReLU's kink) and precision (float32's best error against
    float64's) are read off the curves, not assumed.

    Args:
        steps: ``(s,)`` increasing steps.
        errors: precision → ``(s,)`` ``max|FD(h) − exact|``.
        chosen_step: the step in use.
        dtype: the precision in use (the regime of ``chosen_step`` is read on its curve).

    Example:
        >>> h = np.logspace(-8, 0, 9)
        >>> reading = read_fd_error(h, {"float64": 1e-16 / h**2 + h**2}, chosen_step=1e-7)
        >>> reading.regime, reading.text.split(".")[0]
        ('round-off', 'float64: smallest error 2')
    """
    steps = np.asarray(steps, dtype=np.float64)
    curves = {label: read_curve(label, steps, curve) for label, curve in errors.items()}
    sentences: list[str] = []
    for r in curves.values():
        if r.exact:
            sentences.append(f"{r.label}: exact at every step (the function is locally linear).")
            continue
        causes = []
        if r.roundoff:
            causes.append("left of it round-off grows like 1/h²")
        elif r.best_step == steps[0]:
            causes.append("no dip: round-off never takes over in this range")
        if r.kinks:
            causes.append(
                "right of it the error jumps: the points x ± h reach a kink of the activation, "
                "where no Taylor expansion holds"
            )
        elif r.truncation:
            causes.append("right of it truncation grows with h (like h² while h is small)")
        elif r.best_step == steps[-1]:
            causes.append("no dip: round-off dominates at every step tried")
        detail = "; ".join(causes)
        sentences.append(
            f"{r.label}: smallest error {scientific(r.best_error)} at h = {scientific(r.best_step)}"
            + (f"; {detail}." if detail else ".")
        )
    low = curves.get("float32")
    high = curves.get("float64")
    if low and high and not low.exact and not high.exact and high.best_error > 0:
        ratio = low.best_error / high.best_error
        if ratio > 10:
            sentences.append(
                f"float32's best is {scientific(ratio)} times worse: it rounds at ε ≈ 1e-7, "
                "float64 at ε ≈ 2e-16."
            )
    mine = curves.get(dtype) or next(iter(curves.values()), None)
    at_chosen = math.inf
    if mine is not None and not mine.exact:
        curve = np.maximum(np.asarray(errors[mine.label], dtype=np.float64), 1e-300)
        logs = np.interp(np.log10(chosen_step), np.log10(steps), np.log10(curve))
        at_chosen = float(10.0**logs)
    if mine is None or mine.exact:
        regime = "exact"
    elif at_chosen <= 10 * mine.best_error:
        regime = "best"
    elif chosen_step < mine.best_step:
        regime = "round-off"
    else:
        regime = "kinks" if mine.kinks else "truncation"
    says = {
        "exact": "",
        "round-off": "Your step is left of the dip: round-off dominates; try a larger h.",
        "best": "Your step is near the bottom of the dip: about the best this precision allows.",
        "truncation": "Your step is right of the dip: truncation dominates; try a smaller h.",
        "kinks": "Your step is large enough to cross a kink: the estimate is unreliable.",
    }[regime]
    if says:
        sentences.append(says)
    return FDErrorReading(curves=curves, regime=regime, text=" ".join(sentences))


#: Steps of the explorer's error sweep: one per decade (enough to draw the V).
SWEEP_STEPS = np.logspace(-8, 0, 9)


def fd_error_sweep(
    models: Mapping[str, object],
    point: Sequence[float],
    reference: np.ndarray,
    steps: Sequence[float] = SWEEP_STEPS,
) -> dict[str, np.ndarray]:
    """``max|FD(h) − reference|`` per output for every step, in each model's precision.

    Args:
        models: precision name (``"float32"``/``"float64"``) → a model ``(n,) → (m,)`` in it.
        point: ``n`` coordinates.
        reference: ``(m, n, n)`` exact Hessians (float64) to compare with.
        steps: the steps ``h``.

    Returns:
        precision → ``(m, s)`` errors.
    """
    import torch

    import hessviz as hv

    dtypes = {"float32": torch.float32, "float64": torch.float64}
    errors = {}
    for name, model in models.items():
        x = torch.tensor(point, dtype=dtypes[name])[None]
        rows = []
        for h in steps:
            fd = hv.fd_hessian(model, x, step=float(h), batched=True, flat=True)[0]
            fd = fd.detach().to(torch.float64).numpy()
            rows.append(np.abs(fd - reference).max(axis=(1, 2)))
        errors[name] = np.stack(rows, axis=1)
    return errors


# -- per-layer terms ------------------------------------------------------------------------------


def term_shares(terms: Sequence[np.ndarray]) -> np.ndarray:
    """Each term's share of the Hessian in %: ``100·‖H_l‖_F / Σ_k ‖H_k‖_F`` (zeros: 0 %).

    Shares of the terms' sizes, not of the sum: terms of opposite sign can cancel in ``H``.

    Example:
        >>> term_shares([np.eye(2), 3 * np.eye(2)]).round(6).tolist()
        [25.0, 75.0]
        >>> term_shares([np.zeros((2, 2))]).tolist()
        [0.0]
    """
    norms = np.array([float(np.linalg.norm(np.asarray(t, dtype=np.float64))) for t in terms])
    total = float(norms.sum())
    return 100 * norms / total if total > 0 else np.zeros(len(norms))


# -- timing ---------------------------------------------------------------------------------------


def median_seconds(call: Callable[[], object], budget: float) -> float:
    """Median wall time of ``call`` after one warm-up, over ≥ 3 calls or ``budget`` seconds."""
    call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget and len(times) < 50):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
