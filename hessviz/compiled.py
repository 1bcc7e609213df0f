"""An opt-in handle that runs the layer-wise kernels through ``torch.compile``.

Plain calls already skip their set-up from the second call on (:mod:`hessviz._hot`). What is
left on small models is PyTorch's cost per operation: a 2-16-16-3 MLP's Hessian is ~25 tensor
operations of a few microseconds each. ``torch.compile`` fuses them, at a price of seconds of
compilation per request shape — a price only the caller can decide to pay, so it is paid here,
in :func:`compile`, never in a plain call or in the explorer.

    >>> import torch, hessviz as hv
    >>> net = hv.mlp([2, 16, 16, 3], "tanh")
    >>> X = torch.randn(64, 2, dtype=torch.float64)
    >>> c = hv.compile(net, X, batched=True, ops=("hessian",))    # doctest: +SKIP
    >>> torch.equal(c.hessian(X), hv.hessian(net, X, batched=True))  # doctest: +SKIP
    True

Each compiled kernel proves itself when it is built: its result on the example must equal the
eager kernel's to round-off, or the op stays eager (``handle.kernels`` says which ran and why).
A later call with another shape, dtype, device or a changed model takes the plain path
(validated, exact, uncompiled).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from . import _hot, api
from ._errors import HessvizError

_PUBLIC = {
    "hessian": api.hessian,
    "diagonal": api.hessian_diagonal,
    "laplacian": api.laplacian,
    "hvp": api.hvp,
}


@dataclass
class Compiled:
    """``f``'s derivatives for one request, with compiled kernels where they apply.

    Attributes:
        kernels: per op, ``"compiled"`` or why it runs eagerly.
        compile_seconds: per op, the seconds :func:`compile` spent compiling and checking it.
    """

    f: object
    batched: bool
    outputs: object
    kernels: dict[str, str] = field(default_factory=dict)
    compile_seconds: dict[str, float] = field(default_factory=dict)
    _entries: dict = field(default_factory=dict, repr=False)

    def _run(self, op: str, x, v=None, flat=False):
        entry = self._entries.get(op)
        key = _hot.request_key(op, "auto", x, self.batched, self.outputs)
        if entry is not None and key == entry[0]:
            R = entry[1].run(self.f, x, v)
            if R is not None:
                return entry[1].problem.shape_result(R, api._RESULT_AXES[op], flat)
        args = (self.f, x) if v is None else (self.f, x, v)
        kw = {"batched": self.batched, "outputs": self.outputs}
        return (
            _PUBLIC[op](*args, **kw) if op == "laplacian" else _PUBLIC[op](*args, **kw, flat=flat)
        )

    def hessian(self, x: torch.Tensor, *, flat: bool = False) -> torch.Tensor:
        """:func:`hessviz.hessian` of this handle's ``f`` (same shapes, same numbers)."""
        return self._run("hessian", x, flat=flat)

    def hessian_diagonal(self, x: torch.Tensor, *, flat: bool = False) -> torch.Tensor:
        """:func:`hessviz.hessian_diagonal` of this handle's ``f``."""
        return self._run("diagonal", x, flat=flat)

    def laplacian(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`hessviz.laplacian` of this handle's ``f``."""
        return self._run("laplacian", x)

    def hvp(self, x: torch.Tensor, v: torch.Tensor, *, flat: bool = False) -> torch.Tensor:
        """:func:`hessviz.hvp` of this handle's ``f``."""
        return self._run("hvp", x, v, flat=flat)


def compile(
    f, x, *, batched: bool = False, outputs=None, ops=("hessian", "diagonal", "laplacian", "hvp")
) -> Compiled:
    """Compile ``f``'s Hessian kernels for inputs shaped like ``x`` (seconds per op, once).

    ``ops``: any of ``"hessian"``, ``"diagonal"``, ``"laplacian"``, ``"hvp"``. Each op is first
    computed the plain way (validated, method chosen, self-checked); when that ran the layer-wise
    engine — ``nn.Sequential`` networks and forwards lowered to a chain of layers — its kernel is
    compiled and must reproduce the plain result on ``x`` before it is used. Other methods run as
    plain calls. The handle's methods take the same arguments as the public functions, minus
    ``f``, ``batched`` and ``outputs``.
    """
    unknown = [op for op in ops if op not in _PUBLIC]
    if isinstance(ops, str) or unknown:
        raise HessvizError(f"compile: ops must be a tuple of {', '.join(_PUBLIC)}; got {ops!r}.")
    handle = Compiled(f, batched, outputs)
    v = None
    for op in ops:
        if op == "hvp":
            v = torch.ones_like(x) if isinstance(x, torch.Tensor) else None
        start = time.perf_counter()
        eager = handle._run(op, x, v)  # the plain path: validates and leaves the hot entry
        key = _hot.request_key(op, "auto", x, batched, outputs)
        entry = _hot.find(f, key)
        if entry is None or entry.method != "structured":  # the graph engine runs autograd
            handle.kernels[op] = f"eager: {api.auto_method(f, x, op=op, batched=batched)}"
            continue
        fast = replace(entry, kernel=torch.compile(entry.kernel, dynamic=False))
        p = entry.problem
        X = x.detach().reshape(p.B, p.n)
        p = replace(p, f=f) if p.f is None else p
        args = (X, p.sel) if v is None else (X, v.detach().to(X.dtype).reshape(p.B, p.n), p.sel)
        try:
            with torch.no_grad():
                R = fast.kernel(p, *args)  # compiles now, not in a later call
        except Exception as err:  # noqa: BLE001 - no compiler, an unsupported op…: stay eager
            R, why = (
                None,
                f"{type(err).__name__}: {(str(err).strip() or '?').splitlines()[0][:160]}",
            )
        if R is not None:
            got = entry.problem.shape_result(R, api._RESULT_AXES[op], False)
            tol = 1e3 * torch.finfo(got.dtype).eps
            if torch.allclose(got, eager, rtol=tol, atol=tol * (1 + float(eager.abs().max()))):
                handle._entries[op] = (key, fast)
                handle.kernels[op] = "compiled"
                handle.compile_seconds[op] = time.perf_counter() - start
                continue
            why = "the compiled kernel disagreed with the eager one"
        handle.kernels[op] = f"eager: {why}"
    return handle
