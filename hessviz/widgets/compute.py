"""The explorer's calls into the engine, memoised per stage, returning plain numpy results.

No ipywidgets and no plotly here: :class:`Pipeline` turns an :class:`ExplorerState` into a
:class:`ViewResults` by calling ``hessviz`` (exact Hessians, diagonals, finite differences,
Hutchinson, layer terms) and the compute layer's readers in :mod:`hessviz.analysis` (verdict,
Taylor model, FD noise floor and error sweep, layer shares). Each stage
is recomputed only when its inputs change: a new architecture rebuilds the model, a new point
recomputes the derivatives, a new step recomputes only finite differences, and so on.

The landscape panel needs function values on a grid and the gradient at the point; the engine has
no gradient function, so :func:`value_and_jacobian` takes it from ``torch.autograd``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

import hessviz as hv
from hessviz.analysis import (
    SWEEP_STEPS,
    CurvatureVerdict,
    FDErrorReading,
    curvature_part,
    curvature_verdict,
    fd_error_sweep,
    fd_noise_floor,
    plane_points,
    read_fd_error,
    sorted_eigh,
    taylor_model,
    term_shares,
)

from .state import ExplorerState

#: Landscape grid: points per side and half-width around the point.
GRID_POINTS = 31
GRID_RADIUS = 1.5
#: Steps of the finite-difference error sweep (:data:`hessviz.analysis.SWEEP_STEPS`): one per
#: decade, enough to draw the V; each step costs two FD Hessians, and the sweep is the largest
#: part of a point change.
#: Precisions compared in the sweep; the reference is always the float64 exact Hessian.
SWEEP_DTYPES = ("float32", "float64")

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


#: Intra-op threads for the explorer's engine calls. Its problems are tiny (≈1 ms per call), so
#: threads cannot help, and when the CPU is shared (several dashboard kernels on one server) a
#: stalled worker thread turns a 1 ms call into 20–200 ms (measured on a loaded 2-CPU machine).
DEFAULT_THREADS = 1


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` intra-op threads, restoring the previous count after.

    ``None`` leaves torch's setting alone.
    """
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    if previous != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if previous != threads:
            torch.set_num_threads(previous)


def numpy(tensor: torch.Tensor) -> np.ndarray:
    """A float64 numpy copy of an engine result (detached from any autograd graph)."""
    return tensor.detach().cpu().to(torch.float64).numpy()


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` → ``torch.float32``."""
    return _TORCH_DTYPES[name]


def build_models(state: ExplorerState) -> dict[str, torch.nn.Sequential]:
    """The network of ``state`` in both precisions: ``hv.mlp`` in float64 and its float32 copy.

    The float32 model is the float64 one rounded, so switching precision changes round-off only,
    never the function.
    """
    model = hv.mlp(state.sizes, state.act, seed=state.seed, dtype=torch.float64)
    model.requires_grad_(False)
    return {"float64": model, "float32": copy.deepcopy(model).to(torch.float32)}


def fd_hessian(model: torch.nn.Module, x: torch.Tensor, step: float | None) -> torch.Tensor:
    """``hv.fd_hessian`` of a model at one point, ``(m, n, n)``.

    Evaluated as a batch of one (``batched=True``): the model then sees all perturbed points as
    one batch instead of through ``vmap``, about 30% faster for these small models. (The last bits
    may differ from the unbatched call: FD amplifies round-off by 1/h².)
    """
    return hv.fd_hessian(model, x[None], step=step, batched=True, flat=True)[0]


def fd_diagonal(model: torch.nn.Module, x: torch.Tensor, step: float | None) -> torch.Tensor:
    """``hv.fd_diagonal`` of a model at one point, ``(m, n)`` (as a batch of one, see above)."""
    return hv.fd_diagonal(model, x[None], step=step, batched=True, flat=True)[0]


def value_and_jacobian(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``f(x)`` and ``∂f/∂x`` of a model mapping ``(n,)`` to ``(m,)``.

    Returns:
        ``(values (m,), jacobian (m, n))`` as float64 numpy arrays.
    """
    with torch.enable_grad():
        jacobian = torch.autograd.functional.jacobian(model, x)
    with torch.no_grad():
        values = model(x)
    return numpy(values), numpy(jacobian)


def term_source(term) -> str:
    """Where a ``hv.layer_terms`` item comes from: ``"model[1] (Tanh)"``.

    Uses the term's module ``path`` where the engine gives one, else its ``index`` in the
    ``nn.Sequential``.
    """
    path = getattr(term, "path", None) or str(getattr(term, "index", "?"))
    where = f"model[{path}]" if path.isdigit() else f"model.{path}"
    return f"{where} ({term.name})"


@dataclass(frozen=True)
class Landscape:
    """What the landscape panel draws for one output.

    For ``n ≥ 2``: ``u (p,)``, ``v (p,)``, ``values (p, p)`` and ``taylor (p, p)`` on the plane of
    coordinates ``axes = (a, b)``; ``point (2,)``, ``gradient (2,)``, ``block (2, 2)``. With
    ``part == "curvature"``, ``values`` is ``f − f₀ − gᵀd`` and ``taylor`` is ``½dᵀHd``.
    For ``n = 1``: ``axes = None``, ``u (p,)`` the line, ``values``/``taylor`` ``(p,)``, ``point``,
    ``gradient`` and ``block`` of shape ``(1,)``, ``(1,)``, ``(1, 1)``.
    """

    axes: tuple[int, int] | None
    u: np.ndarray
    v: np.ndarray | None
    values: np.ndarray
    taylor: np.ndarray
    point: np.ndarray
    gradient: np.ndarray
    block: np.ndarray
    part: str = "function"


@dataclass(frozen=True)
class ViewResults:
    """Everything the panels show for one state (numpy arrays, float64).

    Attributes:
        state: the state these results belong to.
        method: the method that computed the exact Hessian (``"auto"`` resolved).
        step: the finite-difference step actually used.
        hessians: ``(m, n, n)`` exact Hessians of every output.
        fd_hessians: ``(m, n, n)`` finite-difference Hessians.
        diagonals: ``(m, n)`` exact diagonals (``hv.hessian_diagonal``).
        fd_diagonals: ``(m, n)`` finite-difference diagonals (``hv.fd_diagonal``).
        hutchinson: ``(m, n)`` Hutchinson estimates with ``state.samples`` probes.
        eigenvalues: ``(n,)`` ascending, of output ``state.out``'s Hessian.
        eigenvectors: ``(n, n)`` columns.
        verdict: the curvature verdict.
        terms: ``(label, (n, n))`` per activation layer for output ``state.out``, labelled as the
            controls are ("hidden layer 1", …).
        term_sources: per term, the module it comes from (``"model[1] (Tanh)"``).
        shares: ``(len(terms),)`` each term's share of the Hessian in % (Frobenius norms).
        values: ``(m,)`` the outputs at the point.
        noise_floor: FD values below this size are round-off (:func:`fd_noise_floor`).
        fd_reading: what the FD error sweep shows (:func:`hessviz.analysis.read_fd_error`).
        landscape: see :class:`Landscape`.
        sweep_steps: ``(s,)`` steps of the FD error sweep.
        sweep_errors: precision → ``(s,)`` ``max|FD(h) − exact|`` for output ``state.out``.
        best_steps: precision → the engine's default step at this point.
        seconds: stage → seconds spent computing it in this run (absent: reused).
        keys: stage → the memo key its value was computed for (lets views skip redraws).
    """

    state: ExplorerState
    method: str
    step: float
    hessians: np.ndarray
    fd_hessians: np.ndarray
    diagonals: np.ndarray
    fd_diagonals: np.ndarray
    hutchinson: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    verdict: CurvatureVerdict
    terms: tuple[tuple[str, np.ndarray], ...]
    term_sources: tuple[str, ...]
    shares: np.ndarray
    values: np.ndarray
    noise_floor: float
    fd_reading: FDErrorReading
    landscape: Landscape
    sweep_steps: np.ndarray
    sweep_errors: dict[str, np.ndarray]
    best_steps: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    keys: dict[str, object] = field(default_factory=dict)

    @property
    def hessian(self) -> np.ndarray:
        """``(n, n)`` exact Hessian of the chosen output."""
        return self.hessians[self.state.out]

    @property
    def fd_hessian(self) -> np.ndarray:
        """``(n, n)`` finite-difference Hessian of the chosen output."""
        return self.fd_hessians[self.state.out]

    @property
    def max_fd_error(self) -> float:
        """``max|exact − FD|`` over the chosen output's Hessian."""
        return float(np.abs(self.hessian - self.fd_hessian).max())


class Pipeline:
    """Computes :class:`ViewResults`, keeping the last value of every stage for reuse.

    Args:
        threads: torch intra-op threads during :meth:`run` (see :data:`DEFAULT_THREADS`);
            ``None`` keeps torch's setting.

    Example:
        >>> results = Pipeline().run(ExplorerState(act="relu"))
        >>> results.hessians.shape, float(abs(results.hessians).max()), results.verdict.kind
        ((2, 2, 2), 0.0, 'flat')
    """

    def __init__(self, *, threads: int | None = DEFAULT_THREADS) -> None:
        self.threads = threads
        self._memo: dict[str, tuple[object, object]] = {}
        self._seconds: dict[str, float] = {}

    # -- memo ------------------------------------------------------------------------------------
    def _stage(self, name: str, key: object, compute: Callable[[], object]):
        hit = self._memo.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        start = time.perf_counter()
        value = compute()
        self._seconds[name] = time.perf_counter() - start
        self._memo[name] = (key, value)
        return value

    def key(self, name: str) -> object:
        """The memo key of a stage's current value (``None`` before the first run)."""
        hit = self._memo.get(name)
        return None if hit is None else hit[0]

    # -- models ----------------------------------------------------------------------------------
    def models(self, state: ExplorerState) -> dict[str, torch.nn.Sequential]:
        """The state's network in both precisions (rebuilt only when the architecture changes)."""
        return self._stage("models", state.architecture, lambda: build_models(state))

    def model(self, state: ExplorerState) -> torch.nn.Sequential:
        """The network in the state's precision."""
        return self.models(state)[state.dtype]

    def point(self, state: ExplorerState, dtype: str | None = None) -> torch.Tensor:
        """The input point as a tensor of the given (default: the state's) precision."""
        return torch.tensor(state.x, dtype=torch_dtype(dtype or state.dtype))

    # -- the run ---------------------------------------------------------------------------------
    def run(self, state: ExplorerState) -> ViewResults:
        """All panel results for ``state`` (which must be normalised)."""
        with torch_threads(self.threads):
            return self._run(state)

    def _run(self, state: ExplorerState) -> ViewResults:
        self._seconds = {}
        model = self.model(state)
        x = self.point(state)
        at = (state.architecture, state.dtype, state.x)
        method = self._stage(
            "method",
            (state.architecture, state.dtype, state.method),
            lambda: hv.auto_method(model, x) if state.method == "auto" else state.method,
        )
        hessians = self._stage(
            "hessian",
            (at, state.method),
            lambda: numpy(hv.hessian(model, x, flat=True, method=state.method)),
        )
        fd_hessians, fd_diagonals = self._stage(
            "fd",
            (at, state.step),
            lambda: (
                numpy(fd_hessian(model, x, step=state.step)),
                numpy(fd_diagonal(model, x, step=state.step)),
            ),
        )
        diagonals = self._stage(
            "diagonal",
            (at, state.method),
            lambda: numpy(hv.hessian_diagonal(model, x, flat=True, method=state.method)),
        )
        hutchinson = self._stage(
            "hutchinson",
            (at, state.samples),
            lambda: numpy(hv.hutchinson_diagonal(model, x, samples=state.samples, flat=True)),
        )
        all_terms = self._stage(
            "terms",
            at,
            lambda: [
                (f"hidden layer {k}", term_source(t), numpy(t.hessian))
                for k, t in enumerate(hv.layer_terms(model, x, flat=True), start=1)
            ],
        )
        values, jacobian = self._stage("gradient", at, lambda: value_and_jacobian(model, x))
        grid = self._stage("grid", (at, state.plane), lambda: self._grid(state, model))
        sweep = self._stage("sweep", (state.architecture, state.x), lambda: self._fd_sweep(state))

        out = state.out
        eigenvalues, eigenvectors = sorted_eigh(hessians[out])
        eps = float(torch.finfo(torch_dtype(state.dtype)).eps)
        verdict = curvature_verdict(eigenvalues, rtol=1e3 * eps, atol=10 * eps)
        step = state.step if state.step is not None else self.default_step(state, state.dtype)
        landscape = self._landscape(state, grid, values[out], jacobian[out], hessians[out])
        terms = tuple((label, term[out]) for label, _, term in all_terms)
        sweep_errors = {name: errors[out] for name, errors in sweep.items()}
        return ViewResults(
            state=state,
            method=method,
            step=step,
            hessians=hessians,
            fd_hessians=fd_hessians,
            diagonals=diagonals,
            fd_diagonals=fd_diagonals,
            hutchinson=hutchinson,
            eigenvalues=eigenvalues,
            eigenvectors=eigenvectors,
            verdict=verdict,
            terms=terms,
            term_sources=tuple(source for _, source, _ in all_terms),
            shares=term_shares([term for _, term in terms]),
            values=values,
            noise_floor=fd_noise_floor(float(np.abs(values).max(initial=0.0)), eps, step),
            fd_reading=read_fd_error(
                SWEEP_STEPS, sweep_errors, chosen_step=step, dtype=state.dtype
            ),
            landscape=landscape,
            sweep_steps=SWEEP_STEPS,
            sweep_errors=sweep_errors,
            best_steps={name: self.default_step(state, name) for name in SWEEP_DTYPES},
            seconds=dict(self._seconds),
            keys={name: hit[0] for name, hit in self._memo.items()},
        )

    @staticmethod
    def default_step(state: ExplorerState, dtype: str) -> float:
        """The engine's default step at this point: ``ε^¼ · max(1, max|x|)``."""
        scale = max((abs(v) for v in state.x), default=0.0)
        return hv.default_fd_step(torch_dtype(dtype), scale)

    # -- stages ----------------------------------------------------------------------------------
    def _grid(self, state: ExplorerState, model: torch.nn.Module):
        """``f`` on the landscape grid, for every output: ``(u, v, values (p, p, m))``."""
        center = np.asarray(state.x, dtype=np.float64)
        if state.n == 1:
            u = center[0] + np.linspace(-GRID_RADIUS, GRID_RADIUS, GRID_POINTS)
            inputs = u[:, None]
            v = None
        else:
            a, b = state.plane
            u, v, inputs = plane_points(center, a, b, radius=GRID_RADIUS, points=GRID_POINTS)
        with torch.no_grad():
            flat = torch.from_numpy(inputs.reshape(-1, state.n)).to(torch_dtype(state.dtype))
            values = numpy(model(flat)).reshape(*inputs.shape[:-1], state.m)
        return u, v, values

    def _landscape(self, state, grid, value, gradient, hessian) -> Landscape:
        u, v, values = grid
        out = state.out
        curved = state.view == "curvature"

        def shown(f: np.ndarray, d: np.ndarray, g: np.ndarray, h: np.ndarray):
            """``(values, model)`` the panel draws: ``f`` and its Taylor model, or the curved
            part ``f − f₀ − gᵀd`` and ``½dᵀHd``."""
            if curved:
                return curvature_part(f, d, float(value), g), taylor_model(d, 0.0, 0 * g, h)
            return f, taylor_model(d, float(value), g, h)

        if state.n == 1:
            d = (u - state.x[0])[:, None]
            f, model = shown(values[:, out], d, gradient, hessian)
            return Landscape(
                axes=None,
                u=u,
                v=None,
                values=f,
                taylor=model,
                point=np.asarray(state.x, dtype=np.float64),
                gradient=gradient,
                block=hessian,
                part=state.view,
            )
        a, b = state.plane
        idx = [a, b]
        block = hessian[np.ix_(idx, idx)]
        point = np.asarray(state.x, dtype=np.float64)[idx]
        d = np.stack(np.meshgrid(u - point[0], v - point[1]), axis=-1)  # (p, p, 2), row = v
        f, model = shown(values[:, :, out], d, gradient[idx], block)
        return Landscape(
            axes=(a, b),
            u=u,
            v=v,
            values=f,
            taylor=model,
            point=point,
            gradient=gradient[idx],
            block=block,
            part=state.view,
        )

    def _fd_sweep(self, state: ExplorerState) -> dict[str, np.ndarray]:
        """``max|FD(h) − exact|`` per output for every sweep step, in each precision.

        The reference is the float64 exact Hessian of the float64 model (the float32 model is its
        rounding), so the float32 curve shows float32 round-off, not a different function.

        Returns:
            precision → ``(m, s)`` errors (:func:`hessviz.analysis.fd_error_sweep`).
        """
        models = self.models(state)
        x64 = self.point(state, "float64")
        reference = numpy(hv.hessian(models["float64"], x64, flat=True))
        return fd_error_sweep(
            {name: models[name] for name in SWEEP_DTYPES}, state.x, reference, SWEEP_STEPS
        )
