r"""The graph engine: the layer-wise Hessian identity on any graph of operations.

``f`` (an ``nn.Module`` with a hand-written ``forward``, or any callable) is captured once per
input shape as a graph of ATen operations (:mod:`.capture`); every node with curvature adds its
own term to the Hessian (:mod:`.assemble`); linear and piecewise-linear nodes add nothing. A plan
is built once per (``f``, its parameters' storages and versions, its modules' modes, sample shape,
batch rows, dtype, device) and proves itself before it is trusted: on the first sample, its
Hessians projected on random directions, their diagonal and one Hessian-vector product must equal
double backward of ``f`` itself to round-off (:mod:`hessviz._selfcheck`). A plan that fails is
never used (:class:`Unsupported`, with the reason). On every call the graph's output must still
equal ``f(x)`` (else :class:`Stale`: the caller captures again).

Kernels follow :mod:`hessviz.methods`: ``X`` is ``(B, n)``, ``sel`` the selected flat outputs;
Hessians are ``(B, m, n, n)``, diagonals ``(B, m, n)``, Laplacians ``(B, m)``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from .._problem import Problem
from .._selfcheck import hvp_mismatch, projected_mismatch, random_directions, relative_error
from . import assemble, lower
from .assemble import Executor
from .capture import Graph, Tap, Unsupported, capture, leaf_tensors

__all__ = ["Plan", "Stale", "Tap", "Unsupported", "plan", "hessian", "diagonal", "laplacian", "hvp",
           "node_terms", "runner"]  # fmt: skip


@dataclass
class Plan:
    """A checked graph for one (f, shape, dtype, device): reused while its key holds."""

    graph: Graph
    executor: Executor
    #: the graph as an ``nn.Sequential`` of Linear layers and activations, when it is one
    #: (:mod:`.lower`); the layer-wise engine runs it after its own checks
    sequential: nn.Module | None = None

    def cost(self, n: int, m: int) -> tuple[float, float]:
        """Multiply-adds per sample: ``(graph engine, torch.func jacfwd(jacrev))`` for ``m``
        full Hessians. The engine carries ``n`` directions through the graph, sweeps back once
        per output and adds one ``n × K × n`` product per tap and output; torch.func runs ``n``
        forward-over-reverse passes per output."""
        rows = max(self.graph.rows, 1)
        fwd = self.graph.flops / rows
        taps = 0.0
        generic = 0.0
        for t in self.graph.taps:
            K = t.node.meta["val"].numel() / rows
            if t.kind == "generic":  # n double-backward products of the op, per output
                generic += 20 * n * _op_flops(t) / rows  # measured: slow per flop
            taps += K * (2 if t.kind in ("product", "matmul") else 1)
            if t.kind == "matmul":  # the inner dimension of the contraction
                taps += K * t.inputs[0].meta["val"].shape[-1]
        engine = n * fwd + m * fwd + m * n * n * taps + m * n * generic
        func = n * (1 + 2 * m) * fwd + m * n * n
        return engine, func

    @property
    def generic_ops(self) -> list[str]:
        """Names of the ops whose terms come from per-op Hessian-vector products."""
        return sorted({t.name for t in self.graph.taps if t.kind == "generic"})


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_REFUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _op_flops(tap: Tap) -> float:
    """Multiply-adds of one call of a tap's op (its output size times its inner dimension)."""
    from .capture import _flops

    return max(_flops(tap.op, tap.name), float(tap.node.meta["val"].numel()))


def _state(f) -> tuple:
    """What invalidates a plan: the tensors' identity and versions, the modules' modes."""
    if not isinstance(f, nn.Module):
        return ()
    # A new tensor (a replaced parameter, .double(), .to(device)) has a new storage, a changed
    # mode (eval/train) a new flag. In-place changes (an optimizer step) keep the plan: the graph
    # takes the tensors as inputs, and a lowered chain shares their storage.
    return (
        tuple(t.data_ptr() for t in f.parameters()),
        tuple(t.data_ptr() for t in f.buffers()),
        tuple(m.training for m in f.modules()),
    )


def _key(p: Problem, X: torch.Tensor) -> tuple:
    rows = X.shape[0] if p.batched else 1
    return (tuple(p.sample_shape), p.batched, rows, X.dtype, X.device, _state(p.f))


def _cache_for(store: weakref.WeakKeyDictionary, f) -> dict | None:
    try:
        return store.setdefault(f, {})
    except TypeError:  # not weak-referenceable: plan every call
        return None


def plan(p: Problem, X: torch.Tensor | None = None) -> Plan:
    """The checked plan for ``p`` on rows ``X`` (cached). Raises :class:`Unsupported`."""
    X = p.X if X is None else X
    key = _key(p, X)
    plans, refused = _cache_for(_PLANS, p.f), _cache_for(_REFUSED, p.f)
    if plans is not None and key in plans:
        return plans[key]
    if refused is not None and key in refused:
        raise Unsupported(refused[key])
    try:
        graph = capture(p, X)
        built = Plan(graph, Executor(graph))
        _self_check(p, X, built)
        built.sequential = lower.chain(graph, leaf_tensors(p.f)[1])
    except Unsupported as err:
        if refused is not None:
            refused[key] = str(err)
        raise
    except Exception as err:  # an op the rules or autograd cannot handle here, say
        why = f"the graph could not be evaluated ({type(err).__name__}: {err})"
        if refused is not None:
            refused[key] = why
        raise Unsupported(why) from err
    if plans is not None:
        stale = [k for k in plans if k[:5] != key[:5] or k[5] != key[5]]
        for k in stale:  # parameters or modes changed: those plans will not be asked again
            del plans[k]
        plans[key] = built
    return built


def _inputs(p: Problem, X: torch.Tensor, V: torch.Tensor | None, directions=None):
    """The leaf ``x``, the input ``f`` takes (with autograd history) and the tangents
    ``(r, *x.shape)``: ``V`` (one per sample), or the ``(r, n)`` ``directions`` (default: the
    ``n`` unit vectors) in every sample."""
    shape = (X.shape[0], *p.sample_shape) if p.batched else tuple(p.sample_shape)
    leaf = X.reshape(shape).detach().requires_grad_(True)
    with torch.enable_grad():  # x must carry history from the leaf, whatever the caller's mode
        x = leaf.clone()  # in-place view ops of f (unsqueeze_) may act on it, never on a leaf
    if V is not None:
        return leaf, x, V.reshape(1, *shape)
    D = torch.eye(p.n, dtype=X.dtype, device=X.device) if directions is None else directions
    r = D.shape[0]
    if p.batched:  # the same directions in every sample: shared, (r, 1, *S)
        return leaf, x, D.reshape(r, 1, *p.sample_shape)
    return leaf, x, D.reshape(r, *shape)


def _current_tensors(f) -> list[torch.Tensor]:
    """The module's parameters and buffers now, in the order of the graph's inputs."""
    if not isinstance(f, nn.Module):
        return []
    return [t.detach() for t in (*f.parameters(), *f.buffers())]


def _rows(p: Problem, sel, X) -> torch.Tensor:
    return torch.eye(p.M, dtype=X.dtype, device=X.device)[list(sel)]


class Stale(Unsupported):
    """The graph no longer computes ``f`` (f's output differs from the graph's)."""


def _check_output(p: Problem, y: torch.Tensor, expected: torch.Tensor | None) -> None:
    """The graph must still compute ``f``: a closure's module replaced after the trace, or a
    value-dependent branch the trace did not take, shows up as a different output."""
    if expected is None:
        return
    y = y.detach().reshape(expected.shape)
    tol = 10 * torch.finfo(y.dtype).eps ** 0.5
    # one host sync: max|y − f(x)| ≤ tol · (1 + max|f(x)|)
    if bool(((y - expected).abs().max() > tol * (1 + expected.abs().max())).item()):
        plans = _cache_for(_PLANS, p.f)
        if plans is not None:
            plans.clear()
        raise Stale("f's output at x differs from the captured graph's")


def _pass(
    p: Problem,
    X: torch.Tensor,
    sel,
    pl: Plan | None,
    *,
    V=None,
    directions=None,
    expected=None,
):
    """One forward pass (values and tangents) and one reverse pass (the taps' adjoints) of rows
    ``X``: ``(plan, leaf x, env, tangents, σ'', adjoints)``. The tangents are ``V`` (one per
    sample), ``directions`` (``(r, n)``) or the ``n`` unit vectors."""
    pl = pl or plan(p, X)
    leaf, x, T0 = _inputs(p, X, V, directions)
    with torch.enable_grad():
        env, tan, s2, y = pl.executor.forward(_current_tensors(p.f), x, T0)
        _check_output(p, y, expected)
        adjoints = pl.executor.adjoints(env, y, _rows(p, sel, X))
    return pl, leaf, env, tan, s2, adjoints


def _run(
    p: Problem,
    X: torch.Tensor,
    sel,
    need: str,
    pl: Plan | None = None,
    expected=None,
    directions=None,
) -> torch.Tensor:
    """``(B, m, n, n)`` Hessians or ``(B, m, n)`` diagonals of rows ``X`` (projected on
    ``directions``, ``(r, n)``, when given: ``(B, m, r, r)`` / ``(B, m, r)``)."""
    pl, _, env, tan, s2, adjoints = _pass(p, X, sel, pl, directions=directions, expected=expected)
    m, n = len(sel), (p.n if directions is None else directions.shape[0])
    with torch.no_grad():
        (total,) = assemble.terms(pl.executor, env, tan, s2, adjoints, m, n, need, acc="sum")
    if total is None:
        shape = (X.shape[0], m, n, n) if need == "hessian" else (X.shape[0], m, n)
        return X.new_zeros(shape)
    return total.reshape(X.shape[0], m, *total.shape[2:])


def hessian(
    p: Problem, X: torch.Tensor, sel: tuple[int, ...], expected=None, pl=None
) -> torch.Tensor:
    return _run(p, X, sel, "hessian", pl, expected=expected)


def diagonal(
    p: Problem, X: torch.Tensor, sel: tuple[int, ...], expected=None, pl=None
) -> torch.Tensor:
    return _run(p, X, sel, "diagonal", pl, expected=expected)


def laplacian(
    p: Problem, X: torch.Tensor, sel: tuple[int, ...], expected=None, pl=None
) -> torch.Tensor:
    return _run(p, X, sel, "diagonal", pl, expected=expected).sum(-1)


def hvp(
    p: Problem, X: torch.Tensor, V: torch.Tensor, sel: tuple[int, ...], expected=None, pl=None
) -> torch.Tensor:
    """``(B, m, n)``: one tangent forward, the adjoints, one pull-back per output."""
    pl, leaf, env, tan, s2, adjoints = _pass(p, X, sel, pl, V=V, expected=expected)
    m = len(sel)
    with torch.enable_grad():
        q = assemble.hvp_pullback(pl.executor, env, tan, s2, adjoints, leaf, m)
    return q.detach().reshape(m, X.shape[0], -1).transpose(0, 1)


def runner(op: str, pl: Plan):
    """The kernel for ``op`` with this checked plan, called as ``(p, X, sel)`` (HVPs:
    ``(p, X, V, sel)``) for rows shaped like the plan's (what :mod:`hessviz._hot` reuses). It
    runs ``f`` on ``X`` first: the graph's output must still equal it (else :class:`Stale`)."""
    kernel = {"hessian": hessian, "diagonal": diagonal, "laplacian": laplacian, "hvp": hvp}[op]

    def run(p: Problem, X: torch.Tensor, *args):
        with torch.no_grad():
            expected = p.batch_fn(X)
        return kernel(p, X, *args, expected=expected, pl=pl)

    return run


def node_terms(p: Problem, X: torch.Tensor, sel: tuple[int, ...]):
    """``[(tap, term)]``: each curvature node's ``(B, m, n, n)`` term; they sum to ``H``."""
    pl, _, env, tan, s2, adjoints = _pass(p, X, sel, None)
    m, n = len(sel), p.n
    with torch.no_grad():
        terms = iter(assemble.terms(pl.executor, env, tan, s2, adjoints, m, n, "hessian"))
        out = []
        for tap, adj in zip(pl.graph.taps, adjoints):
            term = next(terms) if adj is not None else X.new_zeros(X.shape[0], m, n, n)
            out.append((tap, term.reshape(X.shape[0], m, n, n)))
    return out


def _self_check(p: Problem, X: torch.Tensor, pl: Plan) -> None:
    """The plan's proof on the first sample: its Hessians projected on two random directions,
    the diagonals of those projections, and one Hessian-vector product, each against double
    backward of ``f`` (:mod:`hessviz._selfcheck`). Costs a few gradients, whatever ``n``."""
    sel = p.sel[:8]
    P = random_directions(p, 2, X)
    HP = _run(p, X, sel, "hessian", pl, directions=P)[0]
    DP = _run(p, X, sel, "diagonal", pl, directions=P)[0]
    Hv = hvp(p, X, P[:1].expand(X.shape[0], -1), sel, pl=pl)[0]
    checks = {
        "Hessian": projected_mismatch(p, X, P, HP, sel),
        "diagonal": relative_error(DP, torch.diagonal(HP, dim1=-2, dim2=-1), p.n),
        "Hessian-vector product": hvp_mismatch(p, X, P[0], Hv, sel),
    }
    bad = {k: v for k, v in checks.items() if v is not None}
    if bad:
        what = ", ".join(f"{k} off by {v:.1e}" for k, v in bad.items())
        raise Unsupported(
            f"the graph engine failed its self-check on this model ({what} relative to double "
            "backward)"
        )
