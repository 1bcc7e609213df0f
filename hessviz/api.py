"""The public functions: validate once, choose a method, run it in chunks, lay out the result."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import _hot, engine, structured
from ._budget import format_bytes, get_memory_budget
from ._errors import HessvizError, HessvizFallbackWarning
from ._problem import (
    RESULT_AXES,
    Problem,
    check_input,
    check_method,
    grad_mode,
    math_attention,
    prepare,
)
from ._selfcheck import hvp_mismatch, projected_mismatch, random_directions
from .registry import METHODS
from .structured import chain_numpy

#: When a generic method fails on f, auto tries the next one; factors are typical slow-downs.
_GENERIC_ORDER = ("func", "autograd", "loop")
_SLOWER = {"func": 1, "autograd": 2, "loop": 45}
#: How many more multiply-adds an engine may count than torch.func and still be chosen for a
#: full Hessian. torch.func's nested transforms run at a fraction of an engine's rate: measured
#: here (CPU, float64, the test catalogue's CNNs, attention, norms and losses) the engines were
#: faster at 4–10x torch.func's predicted advantage; the layer-wise engine's edge is smaller
#: (its count already includes its stem and tail shortcuts), conv nets being the borderline.
GRAPH_EDGE = 5.0
STRUCTURED_EDGE = 1.5


@dataclass(frozen=True)
class LayerTerm:
    """One curvature node's contribution to the Hessian; the terms of all nodes sum to it.

    For an ``nn.Sequential`` (the layer-wise engine) the nodes are the activation layers and the
    term is ``J_lᵀ diag(σ_l'' ⊙ ∂y/∂a_l) J_l``; for any other ``f`` (the graph engine) they are
    the ops with curvature — activations, products of two input-dependent tensors, norms'
    reciprocal square roots, softmax exponentials…

    Attributes:
        index: position of the node: the activation's index in the flattened ``nn.Sequential``,
            or the node's rank among the graph's curvature nodes.
        name: the activation's class name (``"Tanh"``), or the op's name (``"tanh"``).
        hessian: same shape as :func:`hessian` returns.
        path: the module path the node belongs to (``"2"``, ``"blocks.1.act"``), or ``""``.
    """

    index: int
    name: str
    hessian: torch.Tensor
    path: str = ""


@dataclass(frozen=True)
class Explanation:
    """What ``method="auto"`` runs for one call, and why (see :func:`explain`).

    Attributes:
        op: ``"hessian"``, ``"diagonal"``, ``"laplacian"`` or ``"hvp"``.
        method: the method that runs (a key of :data:`hessviz.METHODS`).
        reason: one or two sentences: why this method, and why not the faster engines.
        checked: whether the fast path proved itself against autograd on this model.
        nodes: the nodes that add curvature terms, ``"tanh (unary) at fc1"``-style (engines only).
    """

    op: str
    method: str
    reason: str
    checked: bool = False
    nodes: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.op}: method {self.method!r}. {self.reason}"
        if self.nodes:
            text += "\nCurvature nodes: " + ", ".join(self.nodes)
        return text


@dataclass
class _Decision:
    method: str
    reason: str
    fw: object = None  # the structured engine's checked pass
    plan: object = None  # the graph engine's plan
    checked: bool = False
    problem: Problem | None = None  # what the kernels run on, when not the user's f itself


def _public(fn: Callable) -> Callable:
    """Run with autograd on (also inside ``no_grad`` / ``inference_mode``).

    Entering :func:`grad_mode` costs ~20 µs, as much as the rest of a repeated call's set-up:
    it is entered only inside ``inference_mode``; under ``no_grad`` a plain ``enable_grad``
    does, and with autograd already on nothing is entered.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.is_inference_mode_enabled():
            with grad_mode():
                return fn(*args, **kwargs)
        if torch.is_grad_enabled():
            return fn(*args, **kwargs)
        with torch.enable_grad():
            return fn(*args, **kwargs)

    return wrapper


_STRUCTURED_VERDICTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _structure(p: Problem, y: torch.Tensor, reference: Problem | None = None):
    """``(checked pass, None)`` when the layer-wise engine applies and proves itself, else
    ``(None, reason)``. The proof (an HVP of the first sample, and for small ``n`` its Hessian,
    against double backward of ``reference.f`` — the user's ``f``; ``p.f`` may be its lowered
    ``nn.Sequential``) is cached per model, input shape, dtype, device and parameter versions."""
    ref = p if reference is None else reference
    try:
        fw = structured.check(p, y)
    except structured.Unsupported as err:
        return None, str(err)
    # The layer-wise engine reads the parameters at every call and its rules do not depend on
    # their values: the verdict holds for this model's layers, modes and input layout.
    key = (
        tuple(p.sample_shape), p.batched, p.X.dtype, p.X.device,
        tuple((type(m), m.training) for m in p.f.modules()),
    )  # fmt: skip
    verdicts = engine._cache_for(_STRUCTURED_VERDICTS, p.f)
    if verdicts is not None and key in verdicts:
        verdict = verdicts[key]
    else:
        sel = p.sel[:8]
        X0 = p.X[:1]
        P = random_directions(p, 1, X0)
        try:
            with torch.no_grad():
                err = hvp_mismatch(ref, X0, P[0], structured.hvp(p, X0, P, sel)[0], sel)
                if err is None and p.n <= 32:  # small: the assembled Hessian too
                    eye = torch.eye(p.n, dtype=X0.dtype, device=X0.device)
                    H0 = structured.hessian(p, X0, sel)[0]
                    err = projected_mismatch(ref, X0, eye, H0, sel)
            verdict = (
                None
                if err is None
                else (
                    f"the layer-wise engine failed its self-check on this model (off by {err:.1e} "
                    "relative to double backward)"
                )
            )
        except Exception as exc:  # noqa: BLE001 - a kernel that cannot run is not trusted
            verdict = f"the layer-wise engine cannot run on this input ({type(exc).__name__})"
        if verdicts is not None:
            verdicts[key] = verdict
    return (fw, None) if verdict is None else (None, verdict)


def _graph_plan(p: Problem):
    try:
        return engine.plan(p, p.X), None
    except engine.Unsupported as err:
        return None, str(err)


def _nodes(pl) -> tuple[str, ...]:
    if pl is None:
        return ()
    return tuple(
        f"{t.name} ({t.kind})" + (f" at {t.path}" if t.path else "") for t in pl.graph.taps
    )


def _decide(fname: str, op: str, p: Problem, y: torch.Tensor, method: str) -> _Decision:
    """The method that runs ``op``, with the reason; fast paths are checked before they count."""
    if method != "auto":
        meth = METHODS[method]
        if op not in meth.computes:
            able = [k for k, v in METHODS.items() if op in v.computes]
            raise HessvizError(
                f"{fname}: method {method!r} does not compute {op}; use 'auto' or one of "
                f"{', '.join(able)}."
            )
        if method == "structured":
            fw, why = _structure(p, y)
            if fw is None:
                raise HessvizError(
                    f"{fname}: method='structured' needs an nn.Sequential of affine layers "
                    f"(Linear, Conv, Flatten, average pooling, eval BatchNorm) and elementwise "
                    f"activations, but {why}. Use method='func', or 'auto' to fall back by itself."
                )
            return _Decision(method, "chosen by the caller", fw=fw, checked=True)
        if method == "graph":
            pl, why = _graph_plan(p)
            if pl is None:
                raise HessvizError(
                    f"{fname}: method='graph' cannot plan for this f: {why}. Use method='func', "
                    "or 'auto' to fall back by itself."
                )
            return _Decision(method, "chosen by the caller", plan=pl, checked=True)
        return _Decision(method, "chosen by the caller")
    fw, _ = _structure(p, y)
    if fw is not None:
        if op == "hessian":
            c = structured.cost(p, fw)
            if c.structured_flops > STRUCTURED_EDGE * c.func_flops:
                return _Decision(
                    "func",
                    "The layer-wise engine applies, but its cost model predicts torch.func is "
                    f"cheaper here ({c.structured_flops:.3g} vs {c.func_flops:.3g} multiply-adds "
                    "per sample).",
                    fw=fw,
                )
        return _Decision(
            "structured",
            "f is an nn.Sequential of affine layers and elementwise activations: the layer-wise "
            "engine applies and agreed with autograd on this model.",
            fw=fw,
            checked=True,
        )
    pl, why_not_graph = _graph_plan(p)
    if pl is not None and pl.sequential is not None:
        q = dataclasses.replace(p, f=pl.sequential)
        fw, _ = _structure(q, y, reference=p)
        cost = None if fw is None else structured.cost(q, fw)
        if fw is not None and (
            op != "hessian" or cost.structured_flops <= STRUCTURED_EDGE * cost.func_flops
        ):
            return _Decision(
                "structured",
                "f was captured as a graph of operations that is a plain chain of Linear layers "
                "and activations: the layer-wise engine runs it as an nn.Sequential of your "
                "tensors, and agreed with autograd on your f.",
                fw=fw,
                checked=True,
                problem=q,
            )
    if pl is not None:
        if op == "hessian":
            mine, func = pl.cost(p.n, p.m)
            if mine > GRAPH_EDGE * func:
                return _Decision(
                    "func",
                    f"The graph engine applies, but its cost model predicts torch.func is cheaper "
                    f"here ({mine:.3g} vs {func:.3g} multiply-adds per sample).",
                    plan=pl,
                )
        generic = pl.generic_ops
        return _Decision(
            "graph",
            "f was captured as a graph of operations; the graph engine agreed with autograd on "
            "this model."
            + (
                f" Ops without a closed-form rule ({', '.join(generic)}) get their terms from "
                "Hessian-vector products of that op."
                if generic
                else ""
            ),
            plan=pl,
            checked=True,
        )
    return _Decision(
        "func",
        "torch.func forward-over-reverse (exact for every differentiable op). The graph engine "
        f"was not used: {why_not_graph}.",
    )


_GENERIC_VERDICTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _generic_choice(p: Problem) -> tuple[str, str]:
    """The first generic method that runs on this ``f``: ``(method, why not the ones before)``.

    torch.func differentiates one sample at a time (``vmap``); an ``f`` that only works on the
    whole batch (a fixed label tensor, an LSTM's batched kernels) needs ``autograd``, which
    differentiates the batch-summed output, or the plain ``loop``. Probed once on one output and
    cached per model, shape, dtype and device.
    """
    key = engine._key(p, p.X)
    verdicts = engine._cache_for(_GENERIC_VERDICTS, p.f)
    if verdicts is not None and key in verdicts:
        return verdicts[key]
    why = ""
    choice = ("loop", "")
    for name in _GENERIC_ORDER[:-1]:
        rows = p.X[:1] if name == "func" else p.X
        try:
            with torch.no_grad(), math_attention():  # one HVP: cheap whatever n is
                METHODS[name].kernel("hvp")(p, rows, torch.ones_like(rows), p.sel[:1])
        except Exception as err:  # noqa: BLE001 - any failure means: not this method
            why += f" {name} failed on this f ({type(err).__name__}: {_short(err)})."
            continue
        choice = (name, why.strip())
        break
    else:
        choice = ("loop", why.strip())
    if verdicts is not None:
        verdicts[key] = choice
    return choice


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text[:160]


def _with_generic(d: _Decision, p: Problem) -> _Decision:
    """Replace a ``func`` decision by the generic method that really runs on this ``f``."""
    if d.method != "func":
        return d
    name, why = _generic_choice(p)
    if name == "func":
        return d
    engines = d.reason.split(" The graph engine was not used: ", 1)
    reason = f"{METHODS[name].description}: it runs on this f where torch.func does not. {why}"
    if len(engines) == 2:
        reason += " The graph engine was not used: " + engines[1]
    return _Decision(name, reason, plan=d.plan)


def _work(op: str, d: _Decision, p: Problem) -> tuple[float, float]:
    """Working memory in elements: ``(per sample, per sample and output)``."""
    n, M, name = p.n, p.M, d.method
    if name == "structured":
        c = structured.cost(p, d.fw)
        if op == "hessian":
            return c.work_elems_per_sample, c.work_elems_per_output
        return 2.0 * c.work_elems_per_sample, 4.0 * n  # Jacobians and their squares
    if name == "graph":
        per_sample = d.plan.graph.sizes / max(d.plan.graph.rows, 1)
        r = 1 if op == "hvp" else n
        return 3.0 * r * per_sample, 2.0 * r * per_sample + r * n
    if op == "hvp" or name == "taylor":  # taylor chunks its basis directions itself
        return 4.0 * (n + M), 8.0 * n
    return 4.0 * n * (n + M), 4.0 * n * (n + M)


def _describe_request(op: str, p: Problem, dtype: torch.dtype) -> str:
    axes = {"hessian": "(B, m, n, n)", "diagonal": "(B, m, n)", "hvp": "(B, m, n)"}.get(
        op, "(B, m)"
    )
    dims = {"B": p.B, "m": p.m, "n": p.n}
    shown = axes
    for k, v in dims.items():
        shown = shown.replace(k, str(v))
    return f"{axes} = {shown} {str(dtype).replace('torch.', '')}"


_WAYS_OUT = (
    "Ways out: select fewer outputs with outputs=..., ask for hv.hessian_diagonal or hv.hvp "
    "instead of the full Hessian, use a smaller batch, or raise the budget with "
    "hv.set_memory_budget(nbytes)."
)


def _check_result_size(fname: str, op: str, p: Problem) -> None:
    """Refuse a result larger than the memory budget before any work is done."""
    budget = get_memory_budget()
    result = p.B * p.m * p.n ** RESULT_AXES[op] * p.X.element_size()
    if result > budget:
        raise HessvizError(
            f"{fname}: the result {_describe_request(op, p, p.X.dtype)} would need "
            f"{format_bytes(result)}, over the memory budget of {format_bytes(budget)}. "
            f"{_WAYS_OUT}"
        )


def _chunks(fname: str, op: str, d: _Decision, p: Problem):
    """Split ``(B, m)`` into chunks whose result and working memory fit the budget."""
    budget = get_memory_budget()
    isz = p.X.element_size()
    per_result = p.n ** RESULT_AXES[op]
    result = p.B * p.m * per_result * isz
    ways_out = _WAYS_OUT
    per_sample, per_output = _work(op, d, p)
    avail = budget - result
    sample_bytes = (per_sample + p.m * (per_output + per_result)) * isz
    if sample_bytes <= avail:
        bc, mc = max(1, min(p.B, int(avail // sample_bytes))), p.m
    else:
        bc = 1
        mc = int((avail - per_sample * isz) // ((per_output + per_result) * isz))
        if mc < 1:
            need = (per_sample + per_output + per_result) * isz
            raise HessvizError(
                f"{fname}: even one sample and one output needs about {format_bytes(need)} of "
                f"working memory with method {d.method!r}, over the memory budget of "
                f"{format_bytes(budget)}. {ways_out}"
            )
    for b0 in range(0, p.B, bc):
        for m0 in range(0, p.m, mc):
            yield slice(b0, min(p.B, b0 + bc)), slice(m0, min(p.m, m0 + mc))


def _execute(
    fname: str,
    op: str,
    p: Problem,
    y: torch.Tensor,
    method: str,
    V: torch.Tensor | None = None,
    key: tuple | None = None,
) -> torch.Tensor:
    """Run ``op`` on the whole problem: ``(B, m, n^k)``.

    With ``method="auto"``, a path that fails during the call hands over to the next exact one
    (graph or layer-wise → func → autograd → loop) with a :class:`HessvizFallbackWarning` that
    names the reason and the typical cost; the result is exact either way. An engine's run in
    one chunk is remembered under ``key`` (:mod:`hessviz._hot`): the next such call skips this.
    """
    _check_result_size(fname, op, p)
    d = _decide(fname, op, p, y, method)
    if method == "auto":
        d = _with_generic(d, p)
    try:
        try:
            return _run(fname, op, d, p, V, key)
        except engine.Stale:  # f changed since its graph was captured: capture it again, once
            d = _decide(fname, op, p, y, method)
            return _run(fname, op, d, p, V, key)
    except HessvizError:
        raise
    except Exception as err:
        if method != "auto":
            raise HessvizError(
                f"{fname}: method {d.method!r} failed while differentiating f: "
                f"{type(err).__name__}: {err}. If f uses .item(), .numpy(), in-place changes of "
                "its input or Python control flow on tensor values, try method='loop'."
            ) from err
        failed, last = d.method, err
    order = [
        m
        for m in _GENERIC_ORDER
        if m != failed
        and _GENERIC_ORDER.index(m)
        >= (_GENERIC_ORDER.index(failed) + 1 if failed in _GENERIC_ORDER else 0)
    ]
    for name in order:
        warnings.warn(
            f"{fname}: method {failed!r} failed on this f ({type(last).__name__}: "
            f"{_short(last)}); computing with {name!r} instead (exact, typically "
            f"{_SLOWER[name]}x the time of 'func'). hv.explain(f, x) shows the path before a call.",
            HessvizFallbackWarning,
            stacklevel=4,
        )
        try:
            return _run(fname, op, _Decision(name, "fallback"), p, V)
        except HessvizError:
            raise
        except Exception as err:  # noqa: BLE001
            failed, last = name, err
    raise HessvizError(
        f"{fname}: every method failed while differentiating f; the last error was "
        f"{type(last).__name__}: {last}. If f uses .item(), .numpy(), in-place changes of its "
        "input or Python control flow on tensor values, it has no Hessian autograd can compute."
    ) from last


def _run(fname, op, d: _Decision, p: Problem, V, key=None) -> torch.Tensor:
    name = d.method
    kernel = METHODS[name].kernel(op)
    user = p
    if d.problem is not None:  # the lowered nn.Sequential: same inputs, outputs and results
        p = d.problem
    per = (p.n,) * RESULT_AXES[op]
    graph = name == "graph"

    def run(bs, ms):
        # Results are plain tensors: no autograd history through the model's parameters.
        extra = {}
        if graph:  # the checked plan of the whole batch serves a whole-batch chunk directly
            extra["expected"] = None if p.Y is None else p.Y[bs]
            if d.plan is not None and bs.stop - bs.start == p.B:
                extra["pl"] = d.plan
        if op == "hvp":
            return kernel(p, p.X[bs], V[bs], p.sel[ms], **extra).detach()
        return kernel(p, p.X[bs], p.sel[ms], **extra).detach()

    chunks = list(_chunks(fname, op, d, p))
    # the generic methods differentiate f itself twice: attention on the math backend
    ctx = math_attention() if name not in ("structured", "graph") else contextlib.nullcontext()
    with ctx:
        if len(chunks) == 1:  # the usual case: no copy into a preallocated result
            R = run(*chunks[0]).reshape(p.B, p.m, *per)
            if name == "structured":
                ref = None if d.problem is None else user
                kernel = structured.runner(op, p)
                if op in chain_numpy.PLANS:  # numpy's kernel where it applies, wins, agrees
                    kernel = chain_numpy.proved(kernel, p.X, V, p.sel, R)
                entry = _hot.make(user.f, name, op, p, kernel, reference=ref)
                _hot.remember(user.f, key, entry)
            elif graph and d.plan is not None:
                entry = _hot.make(user.f, name, op, p, engine.runner(op, d.plan), storages=True)
                _hot.remember(user.f, key, entry)
            return R
        R = p.X.new_empty(p.B, p.m, *per)
        for bs, ms in chunks:
            R[bs, ms] = run(bs, ms)
        return R


def hessian(f, x, *, batched=False, outputs=None, flat=False, method="auto") -> torch.Tensor:
    """Exact Hessian of every selected output of ``f`` with respect to its input.

    Shapes: ``x`` is ``S_in``, ``f(x)`` is ``S_out``; the result is ``S_out + S_in + S_in`` (the
    layout of ``torch.func.hessian``). ``batched=True``: ``x`` is ``(B, *S_in)``, ``f`` maps a batch
    to ``(B, *S_out)``, and a leading ``B`` holds per-sample Hessians. ``outputs``: ``None`` (all),
    an int (one element of the flattened output; output dims vanish) or a list of ints (output
    dims become ``(k,)``). ``flat=True``: ``(m, n, n)`` with ``n = x[0].numel()`` per sample, the
    ``m`` axis dropped for an int ``outputs`` or a 0-d output.

    ``method="auto"`` uses the layer-wise engine (``"structured"``) for supported
    ``nn.Sequential`` networks when its cost model predicts it is faster, else ``torch.func``.
    Linear and ReLU networks give exact zeros (never "not used in the graph" errors). Work is
    chunked under :func:`hessviz.get_memory_budget`; a result larger than the budget is refused
    with its size before anything large is allocated.

    Example:
        >>> x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
        >>> H = hessian(lambda x: torch.sin(x).sum(), x)  # (3,) → () : H is (3, 3)
        >>> torch.allclose(H, torch.diag(-torch.sin(x)))
        True
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
        ...                             torch.nn.Linear(4, 2)).double()
        >>> hessian(model, torch.zeros(5, 3, dtype=torch.float64), batched=True).shape
        torch.Size([5, 2, 3, 3])
    """
    return _call("hessian", "hessian", f, x, batched, outputs, method, flat)


def hessian_diagonal(
    f, x, *, batched=False, outputs=None, flat=False, method="auto"
) -> torch.Tensor:
    """The diagonal ``∂²y_i/∂x_j²`` for every selected output ``i`` and input ``j``.

    This is the "second-order Jacobian". Shape ``S_out + S_in`` (batched: leading ``B``;
    ``flat=True``: ``(m, n)``). ``"auto"`` uses the layer-wise identity
    ``Σ_l Σ_k (σ''⊙∂y_i/∂a_l)_k (J_l)_kj²`` for supported networks — about the cost of one forward
    Jacobian — and forward-over-forward (``"taylor"``) otherwise; no full Hessian is formed.

    Example:
        >>> x = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
        >>> hessian_diagonal(lambda x: x * x * torch.arange(4.0, dtype=x.dtype), x)[2]
        tensor([0., 0., 4., 0.], dtype=torch.float64)
    """
    return _call("hessian_diagonal", "diagonal", f, x, batched, outputs, method, flat)


def laplacian(f, x, *, batched=False, outputs=None, method="auto") -> torch.Tensor:
    """Trace of each selected output's Hessian, shape ``S_out`` (batched: ``(B, *S_out)``).

    Example:
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> laplacian(lambda x: (x ** 3).sum(), x)  # 6·1 + 6·2
        tensor(18., dtype=torch.float64)
    """
    return _call("laplacian", "laplacian", f, x, batched, outputs, method, False)


def hvp(f, x, v, *, batched=False, outputs=None, flat=False, method="auto") -> torch.Tensor:
    """Hessian-vector products ``H_i v`` for every selected output ``i``: shape ``S_out + S_in``.

    ``v`` has the shape of ``x`` (batched: one vector per sample). No Hessian is formed: the
    layer-wise engine pushes one tangent forward and sweeps back once for all outputs.

    Example:
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> A = torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
        >>> hvp(lambda x: x @ A @ x, x, torch.tensor([1.0, 0.0], dtype=torch.float64))  # (A+Aᵀ)e₀
        tensor([4., 1.], dtype=torch.float64)
    """
    return _call("hvp", "hvp", f, x, batched, outputs, method, flat, v)


def _directions(v: object, x: torch.Tensor, p: Problem, batched: bool) -> torch.Tensor:
    """``v`` checked against ``x`` and laid out as ``(B, n)`` in ``x``'s dtype."""
    v = check_input("hvp", v, "v")
    if v.shape != x.shape:
        raise HessvizError(
            f"hvp: v must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}"
            + (" (batched: one vector per sample)" if batched else "")
            + "."
        )
    if v.device != x.device:
        raise HessvizError(f"hvp: v is on {v.device} but x is on {x.device}; move v to x's device.")
    return v.detach().to(p.X.dtype).reshape(p.B, p.n)


def _call(fname, op, f, x, batched, outputs, method, flat, v=None) -> torch.Tensor:
    """Serve one public call: from the plan an earlier call left (:mod:`hessviz._hot`), else
    validate, decide and execute. ``v``: the HVP's directions.

    A plan's kernels run without autograd, so a repeated call needs none of :func:`_public`'s
    mode switching — except inside ``inference_mode``, where it would return inference
    tensors: there the plan runs inside the switch, as the full path does."""
    inference = torch.is_inference_mode_enabled()
    if not inference:
        R = _from_plan(f, _hot.request_key(op, method, x, batched, outputs), x, v, flat)
        if R is not None:
            return R
    return _full_call(fname, op, f, x, batched, outputs, method, flat, v, inference)


def _from_plan(f, key, x, v, flat: bool) -> torch.Tensor | None:
    """The public result from the plan an earlier call left for ``key``, or None (no plan, or
    this call must take the full path)."""
    entry = _hot.find(f, key)
    if entry is None:
        return None
    R = entry.run(f, x, v)
    return None if R is None else entry.shape_result(R, flat)


@_public
def _full_call(fname, op, f, x, batched, outputs, method, flat, v, try_plan) -> torch.Tensor:
    """:func:`_call` past the plans (``try_plan``: look for one first): validate, decide and
    execute, leaving a plan."""
    key = _hot.request_key(op, method, x, batched, outputs)
    R = _from_plan(f, key, x, v, flat) if try_plan else None
    if R is not None:
        return R
    method = check_method(fname, method, list(METHODS))
    p, y = prepare(fname, f, x, batched=batched, outputs=outputs)
    V = None if op != "hvp" else _directions(v, x, p, batched)
    return p.shape_result(_execute(fname, op, p, y, method, V, key), RESULT_AXES[op], flat)


@_public
def layer_terms(f, x, *, batched=False, outputs=None, flat=False) -> list[LayerTerm]:
    """Per-node terms of the Hessian: what each activation (or curvature op) contributes.

    For an ``nn.Sequential`` of affine layers and activations, one :class:`LayerTerm` per
    activation layer (layer-wise engine); for any other ``f`` the graph engine captures, one per
    node with curvature, named by its op and module path. Each ``term.hessian`` has the shape
    :func:`hessian` returns, and the terms sum to the full Hessian. ReLU and linear networks
    give terms that are exactly zero (``σ'' = 0``).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(),
        ...                             torch.nn.Linear(3, 3), torch.nn.Sigmoid()).double()
        >>> x = torch.tensor([0.3, -0.7], dtype=torch.float64)
        >>> terms = layer_terms(model, x, outputs=0)
        >>> [t.name for t in terms]
        ['Tanh', 'Sigmoid']
        >>> torch.allclose(sum(t.hessian for t in terms), hessian(model, x, outputs=0))
        True
    """
    p, y = prepare("layer_terms", f, x, batched=batched, outputs=outputs)
    fw, why_not_layers = _structure(p, y)
    if fw is not None:
        return [
            LayerTerm(index, name, p.shape_result(term, 2, flat), str(index))
            for index, name, term in structured.layer_terms(p, p.X, p.sel)
        ]
    pl, why_not_graph = _graph_plan(p)
    if pl is None:
        raise HessvizError(
            f"layer_terms: neither engine applies to this f: the layer-wise engine needs an "
            f"nn.Sequential of affine layers and elementwise activations ({why_not_layers}), and "
            f"the graph engine could not plan for it ({why_not_graph})."
        )
    with torch.no_grad():
        pairs = engine.node_terms(p, p.X, p.sel)
    return [
        LayerTerm(k, tap.name, p.shape_result(term, 2, flat), tap.path)
        for k, (tap, term) in enumerate(pairs)
    ]


def _explain(fname: str, op: str, f, x, batched, outputs) -> Explanation:
    if op not in RESULT_AXES:
        raise HessvizError(f"{fname}: op must be one of {', '.join(RESULT_AXES)}, got {op!r}.")
    p, y = prepare(fname, f, x, batched=batched, outputs=outputs)
    d = _with_generic(_decide(fname, op, p, y, "auto"), p)
    return Explanation(op, d.method, d.reason, d.checked, _nodes(d.plan))


@_public
def auto_method(f, x, *, op="hessian", batched=False, outputs=None) -> str:
    """The method ``method="auto"`` uses for ``op`` on this ``f`` and ``x`` (see :func:`explain`).

    Example:
        >>> auto_method(torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh()).double(),
        ...             torch.zeros(3, dtype=torch.float64))
        'structured'
        >>> auto_method(lambda x: x.sin().sum(), torch.zeros(3), op="diagonal")
        'graph'
    """
    return _explain("auto_method", op, f, x, batched, outputs).method


@_public
def explain(f, x, *, op="hessian", batched=False, outputs=None) -> Explanation:
    """Which method ``method="auto"`` runs for ``op`` on this ``f`` and ``x``, and why.

    The fast engines are tried in order — the layer-wise engine (``nn.Sequential`` of affine
    layers and activations), then the graph engine (any ``f`` it can capture) — and each must
    agree with a double-backward Hessian-vector product of ``f`` on the first sample before it
    counts (``checked=True``). Otherwise the generic exact method that runs on this ``f`` is
    reported with the reason the engines were not used. The verdicts are cached, so the call
    that follows pays nothing for them.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()).double()
        >>> e = explain(lambda x: net(x).sin().sum(), torch.zeros(3, dtype=torch.float64))
        >>> e.method, e.checked
        ('graph', True)
        >>> e.nodes
        ('tanh (unary)', 'sin (unary)')
    """
    return _explain("explain", op, f, x, batched, outputs)
