"""The public functions: validate once, choose a method, run it in chunks, lay out the result."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import structured
from ._budget import format_bytes, get_memory_budget
from ._errors import HessvizError
from ._problem import Problem, check_input, check_method, grad_mode, prepare
from .registry import METHODS

_GENERIC_FALLBACK = {"hessian": "func", "hvp": "func", "diagonal": "taylor", "laplacian": "taylor"}
_RESULT_AXES = {"hessian": 2, "diagonal": 1, "hvp": 1, "laplacian": 0}


@dataclass(frozen=True)
class LayerTerm:
    """One activation layer's contribution ``J_lᵀ diag(σ_l'' ⊙ ∂y/∂a_l) J_l`` to the Hessian.

    Attributes:
        index: position of the activation in the flattened ``nn.Sequential``.
        name: the activation's class name, e.g. ``"Tanh"``.
        hessian: same shape as :func:`hessian` returns; the terms of all layers sum to it.
    """

    index: int
    name: str
    hessian: torch.Tensor


def _public(fn: Callable) -> Callable:
    """Run with autograd on (also inside ``no_grad`` / ``inference_mode``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with grad_mode():
            return fn(*args, **kwargs)

    return wrapper


def _structure(p: Problem, y: torch.Tensor):
    try:
        return structured.check(p, y), None
    except structured.Unsupported as err:
        return None, str(err)


def _choose(fname: str, op: str, p: Problem, method: str, structure: tuple) -> str:
    """The method that runs ``op``; ``structure`` is :func:`_structure`'s answer (checked once)."""
    if method != "auto":
        meth = METHODS[method]
        if op not in meth.computes:
            able = [k for k, v in METHODS.items() if op in v.computes]
            raise HessvizError(
                f"{fname}: method {method!r} does not compute {op}; use 'auto' or one of "
                f"{', '.join(able)}."
            )
        if meth.needs_structure:
            fw, why = structure
            if fw is None:
                raise HessvizError(
                    f"{fname}: method='structured' needs an nn.Sequential of affine layers "
                    f"(Linear, Conv, Flatten, average pooling, eval BatchNorm) and elementwise "
                    f"activations, but {why}. Use method='func', or 'auto' to fall back by itself."
                )
        return method
    fw, _ = structure
    if fw is None:
        return _GENERIC_FALLBACK[op]
    if op != "hessian":
        return "structured"
    c = structured.cost(p, fw)
    return "structured" if c.structured_flops <= c.func_flops else "func"


def _needs_structure(method: str) -> bool:
    return method == "auto" or METHODS[method].needs_structure


def _work(op: str, name: str, p: Problem, fw) -> tuple[float, float]:
    """Working memory in elements: ``(per sample, per sample and output)``."""
    n, M = p.n, p.M
    if name == "structured":
        c = structured.cost(p, fw)
        if op == "hessian":
            return c.work_elems_per_sample, c.work_elems_per_output
        return 2.0 * c.work_elems_per_sample, 4.0 * n  # Jacobians and their squares
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


def _chunks(fname: str, op: str, name: str, p: Problem, fw):
    """Split ``(B, m)`` into chunks whose result and working memory fit the budget."""
    budget = get_memory_budget()
    isz = p.X.element_size()
    per_result = p.n ** _RESULT_AXES[op]
    result = p.B * p.m * per_result * isz
    ways_out = (
        "Ways out: select fewer outputs with outputs=..., ask for hv.hessian_diagonal or hv.hvp "
        "instead of the full Hessian, use a smaller batch, or raise the budget with "
        "hv.set_memory_budget(nbytes)."
    )
    if result > budget:
        raise HessvizError(
            f"{fname}: the result {_describe_request(op, p, p.X.dtype)} would need "
            f"{format_bytes(result)}, over the memory budget of {format_bytes(budget)}. {ways_out}"
        )
    per_sample, per_output = _work(op, name, p, fw)
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
                f"working memory with method {name!r}, over the memory budget of "
                f"{format_bytes(budget)}. {ways_out}"
            )
    for b0 in range(0, p.B, bc):
        for m0 in range(0, p.m, mc):
            yield slice(b0, min(p.B, b0 + bc)), slice(m0, min(p.m, m0 + mc))


def _execute(
    fname: str, op: str, p: Problem, y: torch.Tensor, method: str, V: torch.Tensor | None = None
) -> torch.Tensor:
    """Run ``op`` on the whole problem: ``(B, m, n^k)``."""
    structure = _structure(p, y) if _needs_structure(method) else (None, None)
    name = _choose(fname, op, p, method, structure)
    try:
        return _run(fname, op, name, p, structure[0], V)
    except HessvizError:
        raise
    except Exception as err:
        if method == "auto" and name != "loop":
            # e.g. data-dependent control flow or a missing forward-mode rule under torch.func:
            # the plain autograd loop differentiates anything autograd can.
            try:
                return _run(fname, op, "loop", p, None, V)
            except Exception:
                pass
        raise HessvizError(
            f"{fname}: method {name!r} failed while differentiating f: "
            f"{type(err).__name__}: {err}. If f uses .item(), .numpy(), in-place changes of its "
            "input or Python control flow on tensor values, try method='loop'."
        ) from err


def _run(fname, op, name, p, fw, V) -> torch.Tensor:
    kernel = METHODS[name].kernel(op)
    per = (p.n,) * _RESULT_AXES[op]

    def run(bs, ms):
        # Results are plain tensors: no autograd history through the model's parameters.
        if op == "hvp":
            return kernel(p, p.X[bs], V[bs], p.sel[ms]).detach()
        return kernel(p, p.X[bs], p.sel[ms]).detach()

    chunks = list(_chunks(fname, op, name, p, fw))
    if len(chunks) == 1:  # the usual case: no copy into a preallocated result
        return run(*chunks[0]).reshape(p.B, p.m, *per)
    R = p.X.new_empty(p.B, p.m, *per)
    for bs, ms in chunks:
        R[bs, ms] = run(bs, ms)
    return R


@_public
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
    method = check_method("hessian", method, list(METHODS))
    p, y = prepare("hessian", f, x, batched=batched, outputs=outputs)
    return p.shape_result(_execute("hessian", "hessian", p, y, method), 2, flat)


@_public
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
    method = check_method("hessian_diagonal", method, list(METHODS))
    p, y = prepare("hessian_diagonal", f, x, batched=batched, outputs=outputs)
    return p.shape_result(_execute("hessian_diagonal", "diagonal", p, y, method), 1, flat)


@_public
def laplacian(f, x, *, batched=False, outputs=None, method="auto") -> torch.Tensor:
    """Trace of each selected output's Hessian, shape ``S_out`` (batched: ``(B, *S_out)``).

    Example:
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> laplacian(lambda x: (x ** 3).sum(), x)  # 6·1 + 6·2
        tensor(18., dtype=torch.float64)
    """
    method = check_method("laplacian", method, list(METHODS))
    p, y = prepare("laplacian", f, x, batched=batched, outputs=outputs)
    return p.shape_result(_execute("laplacian", "laplacian", p, y, method), 0, False)


@_public
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
    method = check_method("hvp", method, list(METHODS))
    p, y = prepare("hvp", f, x, batched=batched, outputs=outputs)
    v = check_input("hvp", v, "v")
    if v.shape != x.shape:
        raise HessvizError(
            f"hvp: v must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}"
            + (" (batched: one vector per sample)" if batched else "")
            + "."
        )
    if v.device != x.device:
        raise HessvizError(f"hvp: v is on {v.device} but x is on {x.device}; move v to x's device.")
    V = v.detach().to(p.X.dtype).reshape(p.B, p.n)
    return p.shape_result(_execute("hvp", "hvp", p, y, method, V), 1, flat)


@_public
def layer_terms(f, x, *, batched=False, outputs=None, flat=False) -> list[LayerTerm]:
    """Per-activation-layer terms of the Hessian from the layer-wise engine.

    Returns one :class:`LayerTerm` per elementwise activation, in network order; each
    ``term.hessian`` has the shape :func:`hessian` returns, and the terms sum to the full Hessian.
    ReLU and linear networks give terms that are exactly zero (``σ'' = 0``).

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
    _choose("layer_terms", "hessian", p, "structured", _structure(p, y))
    return [
        LayerTerm(index, name, p.shape_result(term, 2, flat))
        for index, name, term in structured.layer_terms(p, p.X, p.sel)
    ]


@_public
def auto_method(f, x, *, op="hessian", batched=False, outputs=None) -> str:
    """The method ``method="auto"`` would use for ``op`` on this ``f`` and ``x``.

    Example:
        >>> auto_method(torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh()).double(),
        ...             torch.zeros(3, dtype=torch.float64))
        'structured'
        >>> auto_method(lambda x: x.sin().sum(), torch.zeros(3), op="diagonal")
        'taylor'
    """
    if op not in _RESULT_AXES:
        raise HessvizError(f"auto_method: op must be one of {', '.join(_RESULT_AXES)}, got {op!r}.")
    p, y = prepare("auto_method", f, x, batched=batched, outputs=outputs)
    return _choose("auto_method", op, p, "auto", _structure(p, y))
