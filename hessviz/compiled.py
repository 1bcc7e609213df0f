"""An opt-in handle that runs the layer-wise kernels compiled.

Plain calls already skip their set-up from the second call on (:mod:`hessviz._hot`). What is
left on small models is PyTorch's cost per operation: a 2-16-16-3 MLP's Hessian is ~25 tensor
operations of a few microseconds each. Compiling fuses them, at a price of seconds per request
shape — a price only the caller can decide to pay, so it is paid here, in :func:`compile`, never
in a plain call or in the explorer.

    >>> import torch, hessviz as hv
    >>> net = hv.mlp([2, 16, 16, 3], "tanh")
    >>> X = torch.randn(64, 2, dtype=torch.float64)
    >>> c = hv.compile(net, X, batched=True, ops=("hessian",))    # doctest: +SKIP
    >>> torch.allclose(c.hessian(X), hv.hessian(net, X, batched=True))  # doctest: +SKIP
    True

Candidates, in this order:

- **ahead of time** (chains of Linear layers and activations: MLPs, PINNs, forwards lowered to a
  chain): the kernel, as a function of the input and the layers' weights and biases, goes through
  ``torch.export`` and AOTInductor into a shared library (~20 s per op). A call then costs the
  library's arithmetic and a few microseconds, with no Python guards; the weights are passed at
  every call, so trained weights are used. The library itself proves the inputs finite (one
  fused pass) and checks every tensor's layout against the one it was compiled for
  (AOTInductor's own input checks, switched on for it: :func:`_checks_its_inputs`).
- **numpy kernel** (HVPs of such chains with ``tanh``, ``sigmoid`` or ``sin`` activations, CPU
  float32/float64): the same sweep written in numpy (:mod:`hessviz.structured.chain_numpy`),
  whose operations cost about a microsecond each and whose BLAS is faster in float64 here.
  (A plain ``hv.hvp`` already runs this kernel from its second call where numpy's BLAS measured
  faster for the dtype; then it ties with the plain call, and the op stays "eager": the plain
  path is as fast.)
- **numba kernel** (the same, where numba is installed: ``pip install 'hessviz[fast]'``): the
  numpy kernel with each layer's elementwise work fused into one loop compiled by numba
  (:mod:`hessviz.structured.chain_numba`; seconds to compile once per dtype, cached on disk).
  The fastest of these three wins.
- **just in time** (``torch.compile``, every other layer-wise kernel, and chains where none
  of the first three won).

Each compiled kernel proves itself when it is built: its result on the example must equal the
eager kernel's to round-off, and it must be at least 5 % faster there (on large float64
problems a compiled kernel can lose to the eager one's GEMMs), or the op stays eager
(``handle.kernels`` says which ran and why).
A later call with another shape, dtype, device, a changed model (other modules, modes, settings,
or parameter tensors replaced or re-laid out) or a non-finite input (proved as a plain call
proves it, :meth:`hessviz._hot.Entry.inputs`, or inside the kernel) takes the plain path
(validated, exact, uncompiled).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from . import _hot, _shims, api
from ._errors import HessvizError
from ._selfcheck import agrees
from .structured import chain, chain_numpy
from .structured.kernels import ChainRunner
from .structured.layers import plain_settings

AHEAD_OF_TIME = "compiled ahead of time"
IN_NUMPY = "numpy kernel"
IN_NUMBA = "numba kernel"

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
        kernels: per op, ``"compiled ahead of time"``, ``"numpy kernel"`` (the chain HVP in
            numpy), ``"numba kernel"`` (the same, fused by numba), ``"compiled"``
            (``torch.compile``) or why it runs eagerly.
        compile_seconds: per op, the seconds :func:`compile` spent compiling and checking it.
    """

    f: object
    batched: bool
    outputs: object
    kernels: dict[str, str] = field(default_factory=dict)
    compile_seconds: dict[str, float] = field(default_factory=dict)
    _entries: dict = field(default_factory=dict, repr=False)

    def _run(self, op: str, x, v=None, flat=False):
        compiled = self._entries.get(op)
        if (
            compiled is not None
            and _hot.request_key(op, "auto", x, self.batched, self.outputs) == compiled[0]
        ):
            R = compiled[1].run(self.f, x, v)
            if R is not None:
                return compiled[1].shape_result(R, flat)
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
    f,
    x,
    *,
    batched: bool = False,
    outputs=None,
    ops=("hessian", "diagonal", "laplacian", "hvp"),
    ahead_of_time: bool = True,
) -> Compiled:
    """Compile ``f``'s Hessian kernels for inputs shaped like ``x`` (seconds per op, once).

    ``ops``: any of ``"hessian"``, ``"diagonal"``, ``"laplacian"``, ``"hvp"``. Each op is first
    computed the plain way (validated, method chosen, self-checked); when that ran the layer-wise
    engine — ``nn.Sequential`` networks and forwards lowered to a chain of layers — its kernel is
    compiled (ahead of time for chains unless ``ahead_of_time=False``, for chain HVPs also in
    numpy and, with numba installed, fused by numba; else by ``torch.compile``); it must
    reproduce the plain result on ``x`` and beat the plain kernel's time there by 5 % (best
    of at least five interleaved calls) before it is used. Other
    methods run as plain calls. The handle's methods take the same arguments as the public
    functions, minus ``f``, ``batched`` and ``outputs``.
    """
    unknown = [op for op in ops if op not in _PUBLIC]
    if isinstance(ops, str) or unknown:
        raise HessvizError(f"compile: ops must be a tuple of {', '.join(_PUBLIC)}; got {ops!r}.")
    handle = Compiled(f, batched, outputs)
    for op in ops:
        v = torch.ones_like(x) if op == "hvp" and isinstance(x, torch.Tensor) else None
        start = time.perf_counter()
        eager = handle._run(op, x, v)  # the plain path: validates and leaves the hot entry
        key = _hot.request_key(op, "auto", x, batched, outputs)
        entry = _hot.find(f, key)
        if entry is None or entry.method != "structured":  # the graph engine runs autograd
            handle.kernels[op] = f"eager: {api.auto_method(f, x, op=op, batched=batched)}"
            continue
        first = [(_ahead_of_time, AHEAD_OF_TIME)] if ahead_of_time else []
        why: list[str] = []
        # the fastest kernel that proves itself wins; torch.compile only if none of the first did
        if op == "hvp":  # the only kernel written in numpy
            first += [(_in_numpy, IN_NUMPY), (_in_numba, IN_NUMBA)]
        for tries in (first, [(_just_in_time, "compiled")]):
            with _shims.quiet_leafspec_warning():  # torch's own, from its compiles
                won = _fastest(tries, entry, op, (f, x, v), eager, why)
            if won is not None:
                handle._entries[op] = (key, won[0])
                handle.kernels[op] = won[1]
                handle.compile_seconds[op] = time.perf_counter() - start
                break
        else:
            handle.kernels[op] = "eager: " + "; ".join(why)
    return handle


#: a compiled kernel is kept only when its best time is at most this fraction of the plain
#: kernel's: a tie buys nothing, and a race on one example, a best of a few calls, moves by
#: a few percent between runs on a shared machine
WINS_BY = 0.95


def _fastest(tries: list, entry: _hot.Entry, op: str, args: tuple, eager, why: list):
    """``(kernel, how)`` of the fastest of ``tries`` (``(build, how)`` pairs) whose result on
    the example equals the eager one's and that beats the plain kernel there (by
    :data:`WINS_BY`), or None; each one that failed, disagreed or lost adds its reason to
    ``why``."""
    f, x, v = args
    best = None
    for build, how in tries:
        try:
            fast = build(entry, op, x, v)
            run = _ran(fast.run)
            if not agrees(entry.shape_result(run(f, x, v), False), eager):
                why.append(f"{how}: its result disagreed with the eager kernel's")
                continue
            t_fast, t_plain = _race(run, entry.run, args)
        except Exception as err:  # noqa: BLE001 - no compiler, an unsupported op…
            why.append(f"{how}: {type(err).__name__}: {_first_line(err)}")
            continue
        if t_fast > t_plain:
            why.append(f"{how}: slower here ({t_fast * 1e3:.3g} ms against {t_plain * 1e3:.3g} ms)")
        elif t_fast > WINS_BY * t_plain:
            why.append(f"{how}: level here ({t_fast * 1e3:.3g} ms against {t_plain * 1e3:.3g} ms)")
        elif best is None or t_fast < best[2]:
            best = (fast, how, t_fast)
    return None if best is None else best[:2]


def _ran(run: Callable) -> Callable:
    """``run`` (an entry's: None where the plain path must take over) raising instead of
    returning None: a kernel that stops running after its first call must not win a race on
    the time of giving up."""

    def checked(*args):
        R = run(*args)
        if R is None:
            raise RuntimeError("the kernel did not run")
        return R

    return checked


def _race(fast: Callable, plain: Callable, args: tuple, rounds=50, budget_s=0.5) -> tuple:
    """The best of interleaved calls ``fn(*args)`` of each (at least 5 rounds, at most
    ``rounds``, until ``budget_s`` is spent), in seconds (the best resists other load)."""
    best = [math.inf, math.inf]
    end = time.perf_counter() + budget_s
    for r in range(rounds):
        for i, fn in enumerate((fast, plain)):
            t = time.perf_counter()
            fn(*args)
            best[i] = min(best[i], time.perf_counter() - t)
        if r >= 4 and time.perf_counter() > end:
            break
    return best[0], best[1]


def _first_line(err: Exception) -> str:
    return (str(err).strip() or "?").splitlines()[0][:160]


def _just_in_time(entry: _hot.Entry, op: str, x, v) -> _hot.Entry:
    """The entry with its kernel through ``torch.compile``, compiled at its first call."""
    _refuse_narrowing_laplacian(entry, op)
    return replace(entry, kernel=_JustInTime(entry.kernel))


def _refuse_narrowing_laplacian(entry: _hot.Entry, op: str) -> None:
    """Raise (the reason :func:`_fastest` reports) for a chain Laplacian whose first layer is
    narrower than the input: the plain kernel carries its ``K_1`` rows
    (:func:`~hessviz.structured.kernels.laplacian_stem`, kept between calls), a compiled one
    the ``n`` rows of ``W_1ᵀ`` — slower, after seconds of compiling (n = 784, width 256, batch
    2: 1.6× the plain kernel's time ahead of time, 2.3× through ``torch.compile``)."""
    kernel = entry.kernel
    if op == "laplacian" and isinstance(kernel, ChainRunner) and chain.narrows(kernel.chain):
        K1, n = kernel.chain.linears[0].weight.shape
        raise TypeError(
            f"the first layer narrows ({n} inputs, {K1} units): the plain kernel carries "
            f"{K1} rows, a compiled one {n}"
        )


class _JustInTime:
    """A layer-wise kernel through ``torch.compile``, refused (the plain path takes over and
    explains) once one of its layers' tensors has another dtype or device than when it was
    compiled: the code Dynamo compiles for the new guards need not do what eager PyTorch does
    (a float32 bias in a float64 chain, which eager refuses, was promoted), and compiling
    again would cost seconds inside the user's loop. 1–3 µs a call (a handful of tensors)."""

    def __init__(self, kernel: Callable) -> None:
        self.compiled = torch.compile(kernel, dynamic=False)
        if isinstance(kernel, ChainRunner):
            self.tensors = lambda: chain.tensors(kernel.chain)
        else:  # Runner: its parsed layers' modules
            modules = [lay.module for lay in kernel.layers if isinstance(lay.module, nn.Module)]
            self.tensors = lambda: [
                t for m in modules for d in (m._parameters, m._buffers) for t in d.values()
            ]
        self.kinds = self._kinds()

    def _kinds(self) -> list:
        return [None if t is None else (t.dtype, t.device) for t in self.tensors()]

    def __call__(self, *args):
        if self._kinds() != self.kinds:
            raise RuntimeError("a layer's tensor has another dtype or device than compiled for")
        return self.compiled(*args)


# --- ahead of time: torch.export + AOTInductor, for chains of Linear layers and activations ---


class _Affine:
    """A Linear layer's tensors, as the chain kernels read them."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight, self.bias, self.out_features = weight, bias, weight.shape[0]


def _rows(t: torch.Tensor, B: int, n: int) -> torch.Tensor:
    """``t`` as a contiguous ``(B, n)`` tensor (itself when it already is one; the library
    ignores autograd, so no detach)."""
    if t.shape != (B, n):
        t = t.reshape(B, n)
    return t.contiguous()


#: the chain kernels written for a compiler (no buffers, no writes into views), where the
#: plain one's in-place formulation compiles slower
_TRACED = {"hvp": chain.hvp_traced, "laplacian": chain.laplacian_traced}


class _ChainProgram(nn.Module):
    """``op``'s chain kernel as a function of tensors only, what ``torch.export`` takes: the
    input ``X`` ``(B, n)``, for HVPs the directions ``V`` ``(B, n)``, then the weights and biases
    (:func:`~hessviz.structured.chain.tensors`)."""

    def __init__(self, ch: chain.Chain, op: str, sel: tuple[int, ...]) -> None:
        super().__init__()
        self._derivs, self._op, self._sel = ch.derivs, op, sel
        self._biased = tuple(lin.bias is not None for lin in ch.linears)  # as chain.tensors reads

    def forward(self, X: torch.Tensor, *tensors: torch.Tensor):
        V, tensors = (tensors[0], tensors[1:]) if self._op == "hvp" else (None, tensors)
        it = iter(tensors)
        ch = chain.Chain(
            tuple(_Affine(next(it), next(it) if b else None) for b in self._biased), self._derivs
        )
        kernel = _TRACED.get(self._op) or getattr(chain, self._op)
        R = kernel(ch, X, self._sel) if V is None else kernel(ch, X, V, self._sel)
        # the inputs proved finite in the same library: one fused pass, no separate call
        finite = (
            torch.isfinite(X).all()
            if V is None
            else torch.isfinite(X).all() & torch.isfinite(V).all()
        )
        return R, finite


def _settings(modules: tuple) -> list:
    """``(module, name, value)`` of the activations' plain settings (softplus's ``beta``, …;
    ``training`` is checked with the module tree): compiled in as constants."""
    return [(m, k, v) for m in modules for k, v in plain_settings(m) if k != "training"]


def _layout(tensors: list) -> tuple:
    return tuple((t.shape, t.stride(), t.dtype, t.device) for t in tensors)


@dataclass
class _AheadOfTime:
    """A chain kernel compiled ahead of time, with what its library assumes about ``f``."""

    entry: _hot.Entry  # the plain path's entry: its checks of f and its problem
    run_library: Callable  # [X, (V,) *tensors] -> R, or None when an input is not finite
    chain: chain.Chain
    settings: list  # _settings of the activations, when compiled
    passes_tensors: bool = False  # the weights and biases follow X (V) in run_library's list
    layout: tuple | None = None  # _layout they must have, checked here (None: run_library
    # checks them itself: AOTInductor's input checks, the numpy kernels' NumpyRunner.layers())
    proves_finite: bool = False  # run_library returns None for inputs that are not finite
    #: _layout of the tensors the library was compiled with: where the library checks them
    #: itself (layout None), the first call it refuses (or that fails) makes ``layout`` this,
    #: so the refusal's line on stderr is printed once, not at every call
    built: tuple | None = None

    @property
    def problem(self):
        return self.entry.problem

    def shape_result(self, R: torch.Tensor, flat: bool) -> torch.Tensor:
        return self.entry.shape_result(R, flat)

    def run(self, f, x: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor | None:
        """Like :meth:`hessviz._hot.Entry.run`: the ``(B, m, …)`` result or None."""
        e = self.entry
        tensors = chain.tensors(self.chain) if self.passes_tensors else []
        if (
            _hot._tree(f, e.storages) != e.tree
            or (self.layout is not None and _layout(tensors) != self.layout)
            or any(m.__dict__.get(k, ...) != v for m, k, v in self.settings)
        ):
            return None
        # autograd off (as in Entry.run) where something here may run torch operations: the
        # finiteness check (torch's off the CPU), f on a sample; a library proving the inputs
        # itself runs none
        grad = torch.is_grad_enabled()
        quiet = grad and (not self.proves_finite or e.reference is not None)
        if quiet:
            torch.set_grad_enabled(False)
        try:
            inputs = e.inputs(x, v, prove=not self.proves_finite)
            if inputs is None:
                return None
            args = [t.contiguous() for t in inputs]  # the layout the library was built for
            if e.reference is not None and not e._chain_agrees(f, args[0][:1].clone()):
                return None
            return self.run_library(args + tensors)  # None: an input was not finite
        except Exception:  # noqa: BLE001 - the plain path decides again and explains
            if self.layout is None:  # from now on, checked here before the library runs
                self.layout = self.built
            return None
        finally:
            if quiet:
                torch.set_grad_enabled(grad)


def _numpy_kernel(entry: _hot.Entry, op: str, x, fused: bool) -> _AheadOfTime:
    """The chain HVP kernel written in numpy (:mod:`hessviz.structured.chain_numpy`; with
    ``fused``, its elementwise work in numba's loops, :mod:`hessviz.structured.chain_numba`),
    with the same checks of ``f`` at every call as a kernel compiled ahead of time."""
    how = IN_NUMBA if fused else IN_NUMPY
    if op != "hvp" or not isinstance(entry.kernel, ChainRunner):
        raise TypeError(f"{how}: HVPs of a chain of Linear layers and activations only")
    ch = entry.kernel.chain
    X = _rows(x.detach(), entry.problem.B, entry.problem.n)
    if not chain_numpy.supports(ch, X):
        raise TypeError(f"{how}: CPU float32/float64, tanh, sigmoid or sin only")
    make = chain_numpy.Plan
    if fused:
        try:
            from .structured import chain_numba
        except ImportError as err:  # numba (and SciPy, its BLAS) are an optional extra
            raise TypeError(f"{how}: {err}; pip install 'hessviz[fast]'") from None
        if not chain_numba.supports(ch):
            raise TypeError(f"{how}: tanh, sigmoid or sin only")
        make = chain_numba.FusedPlan
    plan = make(ch, entry.problem.B, X.dtype, entry.problem.sel)
    numpy_runner = chain_numpy.NumpyRunner(ch, "hvp", plan=plan)  # its numpy views of the weights

    def run(args: list) -> torch.Tensor | None:
        layers = numpy_runner.layers()  # None: a weight's shape, dtype or device changed
        if layers is None:
            raise TypeError(f"{how}: a weight is no longer a CPU tensor of the planned shape")
        return plan(args[0], args[1], layers=layers)  # FusedPlan: None if not finite

    return _AheadOfTime(entry, run, ch, _settings(ch.activations), proves_finite=fused)


def _in_numpy(entry: _hot.Entry, op: str, x, v) -> _AheadOfTime:
    """:func:`_numpy_kernel` in numpy's operations."""
    return _numpy_kernel(entry, op, x, fused=False)


def _in_numba(entry: _hot.Entry, op: str, x, v) -> _AheadOfTime:
    """:func:`_numpy_kernel` with the elementwise work fused by numba (compiled at its first
    call for a dtype: seconds, then cached on disk)."""
    return _numpy_kernel(entry, op, x, fused=True)


def _ahead_of_time(entry: _hot.Entry, op: str, x, v) -> _AheadOfTime:
    if not isinstance(entry.kernel, ChainRunner):
        raise TypeError("not a chain of Linear layers and activations")
    _refuse_narrowing_laplacian(entry, op)
    ch = entry.kernel.chain
    if any(True for m in ch.activations for _ in (*m.parameters(), *m.buffers())):
        raise TypeError("an activation holds tensors")
    p = entry.problem
    X = _rows(x.detach(), p.B, p.n)  # laid out as run() will pass it
    V = () if v is None else (_rows(v.detach().to(X.dtype), p.B, p.n),)
    tensors = [t.detach() for t in chain.tensors(ch)]
    # compiled for one chunk of the batch, run chunk by chunk as the plain kernels run
    step = min(p.B, chain.chunk_size(op, ch, X, len(p.sel)))
    chunk = [X[:step], *(t[:step] for t in V)]
    with torch.no_grad():
        program = torch.export.export(_ChainProgram(ch, op, p.sel), (*chunk, *tensors))
    folder = Path(tempfile.mkdtemp(prefix="hessviz-aot-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    package = torch._inductor.aoti_compile_and_package(
        program, package_path=str(folder / f"{op}.pt2")
    )
    library = torch._inductor.aoti_load_package(package)
    # The package's own __call__ re-reads its input and output specs on every call (~15 µs);
    # its loader's run (AOTInductor's C++ API) takes the flat list of tensors directly.
    loader = getattr(library, "loader", None)
    outputs = loader.run if hasattr(loader, "run") else lambda args: library(*args)
    checked = _checks_its_inputs(outputs, [*chunk, *tensors])
    built = _layout(chain.tensors(ch))
    layout = None if checked and X.is_cpu else built
    inputs = 1 + len(V)

    def run(args: list) -> torch.Tensor | None:
        if step == p.B:
            R, finite = outputs(args)
            return R if finite.item() else None
        rows, tensors = args[:inputs], args[inputs:]
        parts = []
        for start in range(0, p.B, step):
            part = [t[start : start + step] for t in rows]  # contiguous rows: same strides
            if part[0].shape[0] < step:  # the last chunk, padded with zeros to the compiled size
                part = [torch.cat([t, t.new_zeros(step - t.shape[0], t.shape[1])]) for t in part]
            R, finite = outputs(part + tensors)
            if not finite.item():
                return None
            parts.append(R)
        return torch.cat(parts)[: p.B]

    return _AheadOfTime(
        entry, run, ch, _settings(ch.activations), True, layout, proves_finite=True, built=built
    )


#: AOTInductor's switch for its libraries' own input checks (dtype, sizes, strides, device type)
_CHECK_INPUTS = "AOTI_RUNTIME_CHECK_INPUTS"


def _checks_its_inputs(outputs: Callable, args: list) -> bool:
    """Switch on a freshly loaded library's own input checks, and prove they run.

    A library compiled by AOTInductor reads ``AOTI_RUNTIME_CHECK_INPUTS`` once, at its first
    call, and from then on checks (or not) every call's tensors against the layouts it was
    compiled for, in C++. That first call is made here with the variable set (and the
    caller's environment restored after): the library then refuses a weight re-laid out
    (``W.T`` stored back, another dtype) itself, where the same check in Python cost ~10 µs
    a call (8 tensors' shapes, strides, dtypes and devices). Proved by a call with ``X``
    re-laid out, which must raise; if it does not (another PyTorch), False: the caller checks
    the layouts in Python instead. The device index is not among the checks (CUDA: Python).
    A later call refused so (a weight stored back transposed) prints the library's one-line
    reason on stderr and takes the plain path; later calls check the layouts in Python
    (:attr:`_AheadOfTime.built`), so that line is printed once."""
    saved = os.environ.get(_CHECK_INPUTS)
    os.environ[_CHECK_INPUTS] = "1"
    try:
        outputs(args)
    finally:
        if saved is None:
            del os.environ[_CHECK_INPUTS]
        else:
            os.environ[_CHECK_INPUTS] = saved
    X = args[0]
    relaid = X.new_zeros(2 * X.numel()).as_strided(X.shape, [2 * s for s in X.stride()])
    try:
        with _stderr_muted():  # the library prints each refusal there before raising
            outputs([relaid, *args[1:]])
    except RuntimeError:
        return True
    return False


@contextlib.contextmanager
def _stderr_muted():
    """File descriptor 2 sent to the null device for the block (C++ writes there directly)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to mute
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
