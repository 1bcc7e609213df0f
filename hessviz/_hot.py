"""Plans built once, run many: a repeated call on a model already seen skips the set-up.

The first call of :func:`hessviz.hessian` (or ``hessian_diagonal``, ``laplacian``, ``hvp``) on a
model validates ``f`` and ``x``, runs ``f`` once for shapes, proves the engine against autograd
and decides the method. When that call ran the layer-wise or the graph engine in one chunk on an
``nn.Module``, it leaves an :class:`Entry` here, keyed by the request (op, method, ``x``'s
shape, dtype and device, ``batched``, ``outputs``, memory budget). A later call with the same key
only checks what the key cannot see, then runs the kernel directly:

- ``x`` (and ``v``) are finite real tensors;
- the model's module tree is the same modules, in the same modes (``training``, dropout ``p``),
  without forward hooks;
- for a hand-written ``forward`` that was lowered to a chain of layers, ``f`` still equals that
  chain on the first sample (as on the first call); a graph's output must still equal ``f(x)``
  on every sample (as on every call), and the tensors it was captured with must still be
  ``f``'s parameters and buffers.

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
from ._problem import Problem

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


def _tree(f: nn.Module, storages: bool) -> tuple:
    """What the kernels assume about ``f``'s modules and is not a parameter's value; with
    ``storages``, also which tensors hold the parameters and buffers (a lowered chain holds the
    user's tensors themselves, so a replaced tensor means the chain is out of date)."""
    tree, stack = [], [f]
    append, pop, extend = tree.append, stack.pop, stack.extend
    while stack:  # f.modules() without its memo set: this runs on every call
        m = pop()
        if m is None:  # a child registered as None
            continue
        d = m.__dict__  # what Module.__init__ sets lives here: no attribute lookups
        hooked = bool(d["_forward_hooks"] or d["_forward_pre_hooks"])
        # ids, not the modules: an entry must not keep f alive (the kernels hold the leaves)
        append((id(m), type(m), d["training"], d.get("p"), hooked))
        if storages:
            for t in (*d["_parameters"].values(), *d["_buffers"].values()):
                append(None if t is None else t.data_ptr())
        extend(d["_modules"].values())
    return tuple(tree)


@dataclass
class Entry:
    """One checked request: the problem template and the kernel, its layers parsed once."""

    problem: Problem  # what the kernel runs on (f None: the caller's f), without data
    kernel: Callable  # (p, X, sel), HVPs (p, X, V, sel): structured.runner, engine.runner
    tree: tuple  # _tree(f, storages) of the user's nn.Module f when the entry was made
    reference: Problem | None = None  # the user's problem, when problem.f is its lowered chain
    storages: bool = False  # the kernel holds f's tensors themselves (a lowered chain, a graph)
    method: str = "structured"  # the registry's name of the engine the kernel belongs to

    def run(self, f: object, x: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor | None:
        """The ``(B, m, …)`` result, or None when this call must take the full path."""
        p = self.problem
        if _tree(f, self.storages) != self.tree:
            return None
        if not (_finite(x) if v is None else _both_finite(x, v)):
            return None
        if p.f is None:
            p = _with_f(p, f)
        try:
            with torch.no_grad():  # nothing here records autograd history: no detach needed
                X = x if x.shape == (p.B, p.n) else x.reshape(p.B, p.n)
                if self.storages:  # f itself runs on X (a graph's check, a lowered chain's)
                    X = X.clone()  # our copy: the layer-wise kernels only read X
                if self.reference is not None and not self._chain_agrees(f, X[:1]):
                    return None
                if v is None:
                    return self.kernel(p, X, p.sel)
                V = v.to(X.dtype)
                return self.kernel(p, X, V if V.shape == X.shape else V.reshape(X.shape), p.sel)
        except Exception:  # noqa: BLE001 - the full path decides again and explains
            return None

    def _chain_agrees(self, f, X0: torch.Tensor) -> bool:
        """The user's ``f`` equals the lowered chain on the first sample (it may branch)."""
        S = self.reference.sample_shape
        x0 = X0.reshape(1, *S) if self.reference.batched else X0.reshape(S)
        y, z = f(x0).reshape(-1), self.problem.f(x0).reshape(-1)
        if y.shape != z.shape:
            return False
        tol = 1e3 * torch.finfo(y.dtype).eps  # the same ops in the same order: usually equal
        return torch.equal(y, z) or bool(torch.allclose(y, z, rtol=tol, atol=tol))


def _finite(x: torch.Tensor) -> bool:
    """Real, non-empty and finite. One reduction: NaN and ±inf reach the sum (a sum that only
    overflows sends a finite x down the full path, which checks element by element)."""
    return x.is_floating_point() and x.numel() > 0 and math.isfinite(x.sum())


def _with_f(p: Problem, f: object) -> Problem:
    """The template ``p`` with the caller's ``f`` (a field copy, cheaper than ``replace``)."""
    q = object.__new__(Problem)
    q.__dict__.update(p.__dict__, f=f)
    return q


def _both_finite(x: torch.Tensor, v: object) -> bool:
    """``x`` finite (:func:`_finite`) and ``v`` a finite real tensor of its shape and device.

    With one dtype, one reduction serves both: ``x · v`` is NaN or ±inf whenever either holds
    a NaN or an infinity (``inf · 0`` is NaN, ``inf − inf`` is NaN), and a dot that only
    overflows sends finite inputs down the full path, which checks element by element."""
    if not (
        isinstance(v, torch.Tensor)
        and v.shape == x.shape
        and v.device == x.device
        and x.is_floating_point()
        and v.is_floating_point()
        and x.numel() > 0
    ):
        return False
    if v.dtype != x.dtype:
        return _finite(x) and _finite(v)
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
    f: object, method: str, problem: Problem, kernel: Callable, *, reference=None, storages=False
):
    """An :class:`Entry` for ``f`` (an ``nn.Module``), or None: plain functions are not cached
    (nothing tells when what they close over changes)."""
    if not isinstance(f, nn.Module) or kernel is None:
        return None
    storages = storages or reference is not None
    ref = None if reference is None else _template(reference, f)
    return Entry(_template(problem, f), kernel, _tree(f, storages), ref, storages, method)


def _template(p: Problem, f: object) -> Problem:
    """``p`` without what an entry must not keep alive: the user's ``f`` (the cache's key; the
    caller passes it again) and the first call's data (only its shape is needed)."""
    X = p.X.new_empty(()).expand(p.X.shape)
    return replace(p, f=None if p.f is f else p.f, X=X, Y=None)
