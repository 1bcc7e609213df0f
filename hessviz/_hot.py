"""Plans built once, run many: a repeated call on a model already seen skips the set-up.

The first call of :func:`hessviz.hessian` (or ``hessian_diagonal``, ``laplacian``, ``hvp``) on a
model validates ``f`` and ``x``, runs ``f`` once for shapes, proves the engine against autograd
and decides the method. When that call ran the layer-wise or the graph engine in one chunk on an
``nn.Module``, it leaves an :class:`Entry` here, keyed by the request (op, method, ``x``'s
shape, dtype and device, ``batched``, ``outputs``, memory budget). A later call with the same key
only checks what the key cannot see, then runs the kernel directly:

- ``x`` (and ``v``) are finite real tensors;
- the model's module tree is the same modules, in the same modes (``training``, dropout ``p``),
  with the same ``forward`` (none set on an instance, or the same one), without forward hooks
  (on a module, or registered for every module);
- for a hand-written ``forward`` that was lowered to a chain of layers, ``f`` still equals that
  chain on the first sample (as on the first call); a graph's output must still equal ``f(x)``
  on every sample (as on every call), and the tensors it was captured with must still be
  ``f``'s parameters and buffers.

A kernel with a ``repeat`` method (the numpy plans' runner,
:meth:`hessviz.structured.chain_numpy.NumpyRunner.repeat`) serves such a call itself: it proves
``x`` finite on the memory it reads and records no autograd history, so autograd's mode is not
switched.

The kernels read the parameters at every call, so trained or edited weights are used as they
are. Anything unexpected — a kernel error after a weight was replaced by one of another shape or
dtype, a changed tree — sends the call down the full path, which decides afresh and explains
errors in words.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ._budget import get_memory_budget
from ._gemm import NUMPY_DTYPES, array, finite_product
from ._problem import RESULT_AXES, Problem
from .structured.layers import global_forward_hooks

_ENTRIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MAX_PER_MODEL = 32  # distinct requests remembered per model (oldest forgotten first)


def _outputs_key(outputs: object) -> object:
    """A hashable stand-in for ``outputs``, or ``...`` when this call is not eligible."""
    if outputs is None:
        return None
    if isinstance(outputs, bool):
        return ...
    if isinstance(outputs, int):
        return ("int", outputs)
    if isinstance(outputs, (list, tuple)) and all(
        isinstance(q, int) and not isinstance(q, bool) for q in outputs
    ):
        return ("list", tuple(outputs))
    return ...  # tensors and other spellings: the full path normalises them


def request_key(op: str, method: object, x: object, batched: object, outputs: object):
    """The key of one request, or None when it cannot be served from the cache."""
    okey = _outputs_key(outputs)
    if okey is ... or not isinstance(x, torch.Tensor) or not isinstance(batched, bool):
        return None
    return (op, method, x.shape, x.dtype, x.device, batched, okey, get_memory_budget())


def _tree(f: nn.Module, storages: bool) -> list:
    """What the kernels assume about ``f``'s modules and is not a parameter's value; with
    ``storages``, also which tensors hold the parameters and buffers (a lowered chain holds the
    user's tensors themselves, so a replaced tensor means the chain is out of date). Weights
    of another shape need no entry here: the layer-wise kernels read the current weights, so
    they either fail on them (the full path then explains) or compute the new model's numbers,
    except for one change that leaves every product valid — a last layer with another number
    of outputs — which the kernels check themselves (the template's ``out_shape``). Forward
    hooks registered for every module count as a hook on each; a ``forward`` set on a module
    instance (``m.forward = …``, which ``m(x)`` then calls) is part of the tree."""
    tree, modules = [global_forward_hooks()], [f]
    for m in modules:  # f.modules() breadth first, without its memo set: this runs every call
        if m is None:  # a child registered as None
            continue
        d = m.__dict__  # what Module.__init__ sets lives here: no attribute lookups
        # ids, not the modules: an entry must not keep f alive (the kernels hold the leaves)
        # a forward set on the instance (usually none): a weak stand-in, always truthy
        tree += (id(m), type(m), d["training"], d.get("p"), "forward" in d and _weak(d["forward"]),
                 not d["_forward_hooks"], not d["_forward_pre_hooks"])  # fmt: skip
        if storages:
            tensors = (*d["_parameters"].values(), *d["_buffers"].values())
            tree.append(tuple(None if t is None else t.data_ptr() for t in tensors))
        modules += d["_modules"].values()  # the loop reaches what is appended
    return tree


def _weak(obj: object) -> object:
    """A stand-in for ``obj`` in a tree that does not keep it alive (a ``forward`` set on an
    instance may hold the model): a weak reference, equal to another while both reach the same
    live object; ``obj`` itself where it takes none (a builtin, which holds no model). Either
    is truthy (a weak reference always; a builtin function or method too)."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return obj


@dataclass
class Entry:
    """One checked request: the problem template and the kernel, its layers parsed once."""

    problem: Problem  # what the kernel runs on (f None: the caller's f), without data
    kernel: Callable  # (p, X, sel), HVPs (p, X, V, sel): structured.runner, engine.runner
    tree: list  # _tree(f, storages) of the user's nn.Module f when the entry was made
    reference: Problem | None = None  # the user's problem, when problem.f is its lowered chain
    storages: bool = False  # the kernel holds f's tensors themselves (a lowered chain, a graph)
    method: str = "structured"  # the registry's name of the engine the kernel belongs to
    op: str = "hessian"  # hessian, diagonal, laplacian or hvp
    rows: tuple = ()  # (B, n): how the kernel takes x
    by_numpy: bool = False  # a repeated call proves x finite by _numpy_finite, not _finite
    shapes: tuple = ()  # the public result shape, with its leading B: (not flat, flat)
    reads_f: bool = True  # the kernel reads problem.f (the caller's f when the template's is None)
    #: the kernel's own way to serve a repeated call (:meth:`run`), or None
    lane: Callable | None = None

    def __post_init__(self):
        p = self.problem
        self.rows = (p.B, p.n)
        self.by_numpy = p.X.device.type == "cpu" and p.X.dtype in NUMPY_DTYPES
        self.shapes = tuple(p.result_shape(RESULT_AXES[self.op], flat) for flat in (False, True))
        self.reads_f = getattr(self.kernel, "reads_f", True)
        if self.reference is None and not self.storages:  # f itself is not run again
            self.lane = getattr(self.kernel, "repeat", None)

    def shape_result(self, R: torch.Tensor, flat: bool) -> torch.Tensor:
        """:meth:`~hessviz._problem.Problem.shape_result` of :meth:`run`'s ``R``."""
        shape = self.shapes[flat]
        out = R if R.shape == shape else R.reshape(shape)
        return out if self.problem.batched else out[0]

    def run(self, f: object, x: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor | None:
        """The ``(B, m, …)`` result, or None when this call must take the full path."""
        if _tree(f, self.storages) != self.tree:
            return None
        if self.lane is not None:
            # a kernel with a ``repeat`` (:meth:`hessviz.structured.chain_numpy.NumpyRunner.repeat`)
            # proves the inputs finite itself and records no autograd history: no mode switch
            # and no second view of x; NotImplemented when it does not take these inputs
            inputs = self.inputs(x, v, prove=False)
            if inputs is None:
                return None
            try:
                R = self.lane(*inputs, self.problem.sel)
            except Exception:  # noqa: BLE001 - the full path decides again and explains
                return None
            if R is not NotImplemented:
                return R
        p = self.problem
        if p.f is None and self.reads_f:
            p = _with_f(p, f)
        # autograd off (nothing here records history: no detach needed); the function form of
        # set_grad_enabled costs half of a no_grad block
        grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        try:
            inputs = self.inputs(x, v)
            if inputs is None:
                return None
            X = inputs[0]
            if self.storages:  # f itself runs on X (a graph's check, a lowered chain's)
                X = X.clone()  # our copy: the layer-wise kernels only read X
            if self.reference is not None and not self._chain_agrees(f, X[:1]):
                return None
            return self.kernel(p, X, *inputs[1:], p.sel)
        except Exception:  # noqa: BLE001 - the full path decides again and explains
            return None
        finally:
            torch.set_grad_enabled(grad)

    def inputs(self, x: torch.Tensor, v: object, prove: bool = True) -> tuple | None:
        """``(X,)`` or, for HVPs, ``(X, V)``: ``x`` (of this entry's key) and ``v`` laid out as
        ``(B, n)`` in ``x``'s dtype, once both are proved finite (unless not ``prove``: a
        kernel that proves it itself); None when not (or when ``v`` is not a real tensor of
        ``x``'s shape and device). Under autograd, an ``x`` or ``v`` that requires grad gives
        ``X``, ``V`` with history (harmless to a kernel that reads numpy views of them)."""
        rows = self.rows
        X = x if x.shape == rows else x.reshape(rows)
        if v is None:
            finite = not prove or (_numpy_finite if self.by_numpy else _finite)(X, None)
            return (X,) if finite else None
        if not _directions_like(v, x):
            return None
        V = v if v.dtype == X.dtype else v.to(X.dtype)  # (a same-dtype .to costs ~3 µs)
        V = V if V.shape == rows else V.reshape(rows)
        finite = not prove or (_numpy_finite if self.by_numpy else _finite)(X, V)
        return (X, V) if finite else None

    def _chain_agrees(self, f, X0: torch.Tensor) -> bool:
        """The user's ``f`` equals the lowered chain on the first sample (it may branch)."""
        S = self.reference.sample_shape
        x0 = X0.reshape(1, *S) if self.reference.batched else X0.reshape(S)
        y, z = f(x0).reshape(-1), self.problem.f(x0).reshape(-1)
        if y.shape != z.shape:
            return False
        tol = 1e3 * torch.finfo(y.dtype).eps  # the same ops in the same order: usually equal
        return torch.equal(y, z) or bool(torch.allclose(y, z, rtol=tol, atol=tol))


def _with_f(p: Problem, f: object) -> Problem:
    """The template ``p`` with the caller's ``f`` (a field copy, cheaper than ``replace``)."""
    q = object.__new__(Problem)
    q.__dict__.update(p.__dict__, f=f)
    return q


def _numpy_finite(X: torch.Tensor, V: torch.Tensor | None) -> bool:
    """Like :func:`_finite`, for ``X`` (and ``V``) laid out as an entry's ``(B, n)`` in its CPU
    float32/float64 dtype (:attr:`Entry.by_numpy`): one numpy dot product of their memory
    (:func:`hessviz._gemm.finite_product`; a torch reduction and its conversion to a Python
    number cost ~6 µs of a repeated tiny-model HVP here, ~10–20 µs at batch 4096). Inputs
    numpy cannot view as they are (not contiguous, a subclass) go to :func:`_finite`."""
    if not (
        type(X) is torch.Tensor
        and X.is_contiguous()
        and (V is None or (type(V) is torch.Tensor and V.is_contiguous()))
    ):
        return _finite(X, V)
    try:
        x = array(X)
        v = x if V is None else array(V)
    except (RuntimeError, TypeError):  # memory numpy cannot view: the tensor way
        return _finite(X, V)
    return finite_product(x, v)


def _directions_like(v: object, x: torch.Tensor) -> bool:
    """``v`` is a real tensor of ``x``'s shape and device (an HVP's directions; any float dtype)."""
    return (
        isinstance(v, torch.Tensor)
        and v.shape == x.shape
        and v.device == x.device
        and v.is_floating_point()
    )


def _finite(x: torch.Tensor, v: object = None) -> bool:
    """``x`` a non-empty finite real tensor and ``v`` (HVPs) None or one of its shape and device.

    One reduction: NaN and ±inf reach the sum (a sum that only overflows sends a finite ``x``
    down the full path, which checks element by element). With ``v``, one product serves both:
    ``x · v`` is NaN or ±inf whenever either holds a NaN or an infinity (``inf · 0`` is NaN,
    ``inf − inf`` is NaN); with two dtypes each is summed on its own."""
    if not (x.is_floating_point() and x.numel() > 0):
        return False
    if v is None:
        return math.isfinite(x.sum())
    if not _directions_like(v, x):
        return False
    if v.dtype != x.dtype:
        return math.isfinite(x.sum()) and math.isfinite(v.sum())
    return math.isfinite(torch.dot(x.reshape(-1), v.reshape(-1)))


def find(f: object, key) -> Entry | None:
    """The entry for this request, if an earlier call left one."""
    if key is None:
        return None
    try:
        per_model = _ENTRIES.get(f)
    except TypeError:  # not weak-referenceable: never cached
        return None
    return None if per_model is None else per_model.get(key)


def remember(f: object, key, entry: Entry | None) -> None:
    """Keep ``entry`` for later calls with ``key`` (forgotten with ``f``)."""
    if key is None or entry is None:
        return
    try:
        per_model = _ENTRIES.setdefault(f, {})
    except TypeError:
        return
    if len(per_model) >= _MAX_PER_MODEL:
        per_model.pop(next(iter(per_model)))
    per_model[key] = entry


def make(
    f: object,
    method: str,
    op: str,
    problem: Problem,
    kernel: Callable,
    *,
    reference=None,
    storages=False,
):
    """An :class:`Entry` for ``f`` (an ``nn.Module``), or None: plain functions are not cached
    (nothing tells when what they close over changes)."""
    if not isinstance(f, nn.Module) or kernel is None:
        return None
    storages = storages or reference is not None
    ref = None if reference is None else _template(reference, f)
    tree = _tree(f, storages)
    return Entry(_template(problem, f), kernel, tree, ref, storages, method, op)


def _template(p: Problem, f: object) -> Problem:
    """``p`` without what an entry must not keep alive: the user's ``f`` (the cache's key; the
    caller passes it again) and the first call's data (only its shape is needed)."""
    X = p.X.new_empty(()).expand(p.X.shape)
    return replace(p, f=None if p.f is f else p.f, X=X, Y=None)
