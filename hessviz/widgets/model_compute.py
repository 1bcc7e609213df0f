"""The engine calls behind :meth:`HessianExplorer.for_model`: a user's model at one input.

No ipywidgets and no plotly here (the layering of :mod:`hessviz.widgets.compute`):
:func:`describe` checks the model and the input once and says which panels apply;
:class:`ModelCompute` calls ``hessviz`` (``hessian``, ``hessian_diagonal``, ``laplacian``,
``layer_terms``, ``fd_hessian``, ``explain``) and :mod:`hessviz.analysis` (eigenvalues, verdict,
FD noise floor), memoised per input point and output, and returns plain float64 numpy arrays.

Two kinds of input:

- **vector** — any input whose last two dimensions are not both > 1 (``(n,)``, ``(1, d)`` for a
  PINN written for batches), with ``n = x.numel() ≤`` :data:`MAX_VECTOR_INPUTS`: every output's
  Hessian ``(m, n, n)``, their diagonals, finite differences, the per-node terms.
- **image** — ``(…, H, W)`` with ``H, W > 1`` (``(1, 28, 28)``, ``(1, 1, 28, 28)``): the chosen
  output's ``n × n`` Hessian (``hv.hessian(model, x, outputs=k, flat=True)``), every output's
  diagonal, the chosen pixel's Hessian row, all eigenvalues. No per-node terms (each would be
  another ``n × n`` matrix) and no finite differences (``2n²`` model calls).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import hessviz as hv
from hessviz.analysis import CurvatureVerdict, curvature_verdict, fd_noise_floor, sorted_eigh

from .compute import numpy

#: Largest vector input whose Hessian, FD comparison and terms the model explorer draws.
MAX_VECTOR_INPUTS = 64
#: Largest image (pixels) whose full Hessian of one output the model explorer forms.
MAX_IMAGE_PIXELS = 4096
#: Finite differences cost ~2n² model calls: compared only up to this many inputs.
MAX_FD_INPUTS = 32
#: At most this many per-node terms are drawn; the smaller ones are summed into one "other".
MAX_TERMS = 8


@dataclass(frozen=True)
class ModelProblem:
    """A model and one input as the explorer sees them.

    Attributes:
        model: the model (or callable) as given.
        x: the input point (a detached copy), shape ``S_in``.
        kind: ``"vector"`` or ``"image"``.
        n: inputs (``x.numel()``); m: outputs (``f(x).numel()``).
        image_shape: ``(rows, W)`` the image is drawn as (channels stacked); ``None`` for vectors.
        input_names: ``n`` names (``x0``, … when none were given).
        output_names: ``m`` names (``y0``, … when none were given).
    """

    model: object
    x: torch.Tensor
    kind: str
    n: int
    m: int
    image_shape: tuple[int, int] | None
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    @property
    def scalar(self) -> bool:
        """Whether the model has one output (a PINN's ``u``): the Laplacian is its headline."""
        return self.m == 1


def _names(names, count: int, prefix: str, what: str) -> tuple[str, ...]:
    if names is None:
        return tuple(f"{prefix}{k}" for k in range(count))
    names = tuple(str(name) for name in names)
    if len(names) != count:
        raise hv.HessvizError(
            f"HessianExplorer.for_model: got {len(names)} {what}_names for {count} {what}s; "
            f"pass one name per {'flattened ' if what == 'output' else ''}{what} or none."
        )
    return names


def describe(model, x, *, input_names=None, output_names=None) -> ModelProblem:
    """Check ``model`` and ``x`` once (one forward pass) and decide which panels apply.

    Raises:
        hv.HessvizError: with the fix, for a non-callable model, a non-tensor or non-float
            input, a model that does not return a tensor, too many inputs, or names that do not
            match the input or output size. Errors of the model itself propagate as they are.
    """
    if not callable(model):
        raise hv.HessvizError(
            f"HessianExplorer.for_model: model must be an nn.Module or a function of a tensor, "
            f"got {type(model).__name__}."
        )
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise hv.HessvizError(
            f"HessianExplorer.for_model: x must be one floating-point input tensor, as the model "
            f"takes it ((n,) or an image (1, 28, 28)), got {got}."
        )
    x = x.detach().clone()
    with torch.no_grad():
        y = model(x)
    if not isinstance(y, torch.Tensor):
        raise hv.HessvizError(
            f"HessianExplorer.for_model: the model must return a tensor, got {type(y).__name__}."
        )
    n, m = x.numel(), y.numel()
    image = x.dim() >= 2 and x.shape[-1] > 1 and x.shape[-2] > 1
    if image and n > MAX_IMAGE_PIXELS:
        raise hv.HessvizError(
            f"HessianExplorer.for_model: an image of {n} pixels has a {n}×{n} Hessian per output; "
            f"the explorer draws images up to {MAX_IMAGE_PIXELS} pixels. Use "
            "hv.hessian_diagonal(model, x) or hv.hvp for larger inputs."
        )
    if not image and n > MAX_VECTOR_INPUTS:
        raise hv.HessvizError(
            f"HessianExplorer.for_model: a vector of {n} inputs is more than the explorer draws "
            f"({MAX_VECTOR_INPUTS}); pass an image-shaped input (…, H, W) or use "
            "hv.hessian_diagonal(model, x) directly."
        )
    if m == 0:
        raise hv.HessvizError("HessianExplorer.for_model: the model returned an empty tensor.")
    return ModelProblem(
        model=model,
        x=x,
        kind="image" if image else "vector",
        n=n,
        m=m,
        image_shape=(n // x.shape[-1], x.shape[-1]) if image else None,
        input_names=_names(input_names, n, "x", "input"),
        output_names=_names(output_names, m, "y", "output"),
    )


def short_reason(explanation: hv.Explanation) -> str:
    """The first sentence of ``hv.explain``'s reason (a status line is not a report)."""
    first = explanation.reason.strip().split(". ")[0].rstrip(".")
    return first + "."


def term_label(term) -> str:
    """A curvature node's name for a panel: ``"net.1 · tanh"``, or ``"mul (node 0)"``."""
    return f"{term.path} · {term.name}" if term.path else f"{term.name} (node {term.index})"


def largest_terms(
    terms: list[tuple[str, np.ndarray]], limit: int = MAX_TERMS
) -> list[tuple[str, np.ndarray]]:
    """At most ``limit`` terms, in network order: the largest ones, the rest summed as one.

    The sum of the returned terms is the sum of all terms (so the panel's check still holds).

    Example:
        >>> t = [(f"t{k}", np.full((1, 1), float(k))) for k in range(4)]
        >>> [(label, float(m[0, 0])) for label, m in largest_terms(t, limit=3)]
        [('t2', 2.0), ('t3', 3.0), ('2 other nodes', 1.0)]
    """
    if len(terms) <= limit:
        return terms
    norms = [float(np.linalg.norm(matrix)) for _, matrix in terms]
    keep = sorted(sorted(range(len(terms)), key=lambda k: -norms[k])[: limit - 1])
    rest = [k for k in range(len(terms)) if k not in keep]
    other = (f"{len(rest)} other nodes", np.sum([terms[k][1] for k in rest], axis=0))
    return [terms[k] for k in keep] + [other]


@dataclass(frozen=True)
class ModelResults:
    """What the model explorer shows for one point, output and pixel (float64 numpy arrays).

    Attributes:
        explanation: ``hv.explain(model, x, op="hessian")`` at this point.
        x: ``(n,)`` the point (flattened).
        output: the chosen output's index in the flattened output.
        values: ``(m,)`` the outputs at the point.
        hessian: ``(n, n)`` the chosen output's Hessian (``hv.hessian(…, outputs=k, flat=True)``
            for images; row ``k`` of ``hv.hessian(…, flat=True)`` for vectors).
        diagonals: ``(m, n)`` every output's diagonal (``hv.hessian_diagonal(…, flat=True)``).
        laplacians: ``(m,)`` every output's Laplacian (``hv.laplacian``; for images the sum of
            the diagonal, which is what ``hv.laplacian`` computes).
        eigenvalues: ``(n,)`` ascending; eigenvectors: ``(n, n)`` columns (vectors only).
        verdict: the curvature verdict of the chosen output.
        fd_hessian: ``(n, n)`` finite differences of the chosen output (small vectors only).
        step: the FD step; noise_floor: FD values below it are round-off.
        terms: ``(label, (n, n))`` per curvature node for the chosen output (vectors only; at
            most :data:`MAX_TERMS`, see :func:`largest_terms`).
        terms_note: why there are no terms (the engine's message), or ``""``.
        pixel: ``(row, column)`` of the chosen pixel (images only).
        pixel_row: the chosen pixel's Hessian row as an image (images only).
    """

    explanation: hv.Explanation
    x: np.ndarray
    output: int
    values: np.ndarray
    hessian: np.ndarray
    diagonals: np.ndarray
    laplacians: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray | None
    verdict: CurvatureVerdict
    fd_hessian: np.ndarray | None = None
    step: float | None = None
    noise_floor: float | None = None
    terms: tuple[tuple[str, np.ndarray], ...] = ()
    terms_note: str = ""
    pixel: tuple[int, int] | None = None
    pixel_row: np.ndarray | None = None


class ModelCompute:
    """Engine calls for one :class:`ModelProblem`, memoised by point (and output for images)."""

    def __init__(self, problem: ModelProblem) -> None:
        self.problem = problem
        self._memo: dict[tuple, object] = {}
        self._terms_note = ""

    def _once(self, key: tuple, compute):
        if key not in self._memo:
            if len(self._memo) > 64:
                self._memo.clear()
            self._memo[key] = compute()
        return self._memo[key]

    def point(self, values: tuple[float, ...] | None = None) -> torch.Tensor:
        """The input with its first coordinates replaced by ``values`` (``None``: as given)."""
        x = self.problem.x
        if values is None:
            return x
        flat = x.reshape(-1).clone()
        flat[: len(values)] = torch.tensor(values, dtype=x.dtype, device=x.device)
        return flat.reshape(x.shape)

    def run(
        self, output: int, values: tuple[float, ...] | None = None, pixel=(0, 0)
    ) -> ModelResults:
        """Everything the panels need at the point ``values``, for ``output`` (and ``pixel``)."""
        p, f = self.problem, self.problem.model
        x = self.point(values)
        at = None if values is None else tuple(float(v) for v in values)
        m, n = p.m, p.n
        explanation = self._once(("explain", at), lambda: hv.explain(f, x, op="hessian"))
        outputs = self._once(("values", at), lambda: numpy(self._forward(x)).reshape(m))
        diagonals = self._once(
            ("diagonal", at), lambda: numpy(hv.hessian_diagonal(f, x, flat=True)).reshape(m, n)
        )
        if p.kind == "image":  # the diagonal's sum: another pass of hv.laplacian costs as much
            laplacians = diagonals.sum(axis=1)
        else:
            laplacians = self._once(("laplacian", at), lambda: numpy(hv.laplacian(f, x)).reshape(m))
        eps = float(torch.finfo(x.dtype).eps)
        common = dict(
            explanation=explanation,
            x=numpy(x).reshape(-1),
            output=output,
            values=outputs,
            diagonals=diagonals,
            laplacians=laplacians,
        )
        if p.kind == "image":
            hessian = self._once(
                ("hessian", at, output),
                lambda: numpy(hv.hessian(f, x, outputs=output, flat=True)).reshape(n, n),
            )
            eigenvalues = self._once(
                ("eigenvalues", at, output), lambda: np.linalg.eigvalsh((hessian + hessian.T) / 2)
            )
            r, c = int(pixel[0]), int(pixel[1])
            return ModelResults(
                **common,
                hessian=hessian,
                eigenvalues=eigenvalues,
                eigenvectors=None,
                verdict=curvature_verdict(eigenvalues, rtol=1e3 * eps, atol=10 * eps),
                pixel=(r, c),
                pixel_row=hessian[r * p.image_shape[1] + c].reshape(p.image_shape),
            )
        hessians = self._once(
            ("hessian", at), lambda: numpy(hv.hessian(f, x, flat=True)).reshape(m, n, n)
        )
        eigenvalues, eigenvectors = sorted_eigh(hessians[output])
        fd, step, floor = None, None, None
        if n <= MAX_FD_INPUTS:
            step = hv.default_fd_step(x.dtype, float(x.abs().max()))
            fd = self._once(
                ("fd", at),
                lambda: numpy(hv.fd_hessian(f, x, step=step, flat=True)).reshape(m, n, n),
            )[output]
            floor = fd_noise_floor(float(np.abs(outputs).max(initial=0.0)), eps, step)
        terms = self._once(("terms", at), lambda: self._terms(x))
        return ModelResults(
            **common,
            hessian=hessians[output],
            eigenvalues=eigenvalues,
            eigenvectors=eigenvectors,
            verdict=curvature_verdict(eigenvalues, rtol=1e3 * eps, atol=10 * eps),
            fd_hessian=fd,
            step=step,
            noise_floor=floor,
            terms=tuple(largest_terms([(label, t[output]) for label, t in terms or []])),
            terms_note="" if terms is not None else self._terms_note,
        )

    def _terms(self, x: torch.Tensor) -> list[tuple[str, np.ndarray]] | None:
        """Per-node terms of every output, or ``None`` (with a note) where no engine splits f."""
        m, n = self.problem.m, self.problem.n
        try:
            terms = hv.layer_terms(self.problem.model, x, flat=True)
        except hv.HessvizError as error:
            self._terms_note = f"No per-node terms for this model: {error}"
            return None
        return [(term_label(t), numpy(t.hessian).reshape(m, n, n)) for t in terms]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.problem.model(x)
