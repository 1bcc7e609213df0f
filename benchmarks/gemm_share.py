"""How much of a call is GEMM at torch's own GEMM rate: the grid's *GEMM share*.

:func:`record` runs a call once under a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
and keeps every matrix product it issues (``mm``, ``bmm``, ``addmm``, ``baddbmm``, in place or
not: ``linear`` and ``matmul`` arrive as these), as shapes. :func:`replay` builds fresh
contiguous operands for exactly those products and returns a callable that runs them with
``torch.mm``/``torch.bmm`` into preallocated outputs, and nothing else. Then::

    share = t(replay) / t(call)           (1.0: all of the call is GEMM at torch's rate)
    rate  = GEMM FLOPs / t(call)          against   GEMM FLOPs / t(replay)

A product torch would run on strided views, or one broadcast over a stride-0 batch, is replayed
contiguous: the share also counts what memory order costs.

:func:`bound` adds the least elementwise work any code that calls a BLAS must do: between two
products of a network's derivative there is always some (``σ'``, ``σ''``, products with
adjoints — two products with nothing between them would be one product), and a BLAS call
cannot do it. ``bound`` runs the replay and then **one in-place pass** (``x *= c``: one read,
one write, no other operand) over the smaller of each product's left factor and its output,
for every product but the last (:func:`pass_sizes`). Then::

    ceiling = t(replay) / t(bound)

is the share of a call doing nothing but its products and one such pass between them — no
Python, no dispatch, no second pass. Past it, the elementwise work has to run inside the GEMM
while its output tile is in cache (epilogue fusion), which no BLAS call offers.

:func:`replay_numpy` runs them through ``np.matmul`` (numpy's BLAS, which hessviz uses where it
is faster: :mod:`hessviz._gemm`). :func:`replay_xla` runs the same products through XLA
(``jnp.matmul`` under one ``jit``, on the same core): where XLA's rate on them is above torch's,
a JAX program of the same FLOPs is that much faster on the BLAS alone, whatever hessviz does
around its products.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_PRODUCTS = {  # op → positions of its two factors
    aten.mm: (0, 1),
    aten.bmm: (0, 1),
    aten.addmm: (1, 2),
    aten.addmm_: (1, 2),
    aten.baddbmm: (1, 2),
    aten.baddbmm_: (1, 2),
}


@dataclass(frozen=True)
class Gemm:
    """One product: ``batch`` × ``(M, K) @ (K, N)`` in ``dtype``."""

    batch: int
    M: int
    K: int
    N: int
    dtype: torch.dtype

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.M * self.K * self.N


class _Record(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.gemms: list[Gemm] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        where = _PRODUCTS.get(func.overloadpacket)
        if where is not None:
            A, B = args[where[0]], args[where[1]]
            batch = A.shape[0] if A.ndim == 3 else 1
            self.gemms.append(Gemm(batch, A.shape[-2], A.shape[-1], B.shape[-1], A.dtype))
        return func(*args, **(kwargs or {}))


def record(call: Callable[[], object]) -> list[Gemm]:
    """The matrix products one ``call()`` issues, in order. hessviz hands some to numpy's BLAS
    (:mod:`hessviz._gemm`), and plain calls on small chains may run kernels written in numpy
    (:mod:`hessviz.structured.chain_numpy`), where no dispatch mode sees them: while
    recording, every product goes to torch and every call runs PyTorch's chain kernel (the
    same products, the same shapes; a numpy kernel may lay out its rows otherwise, same
    FLOPs)."""
    from unittest import mock

    from hessviz import _gemm
    from hessviz.structured import chain_numpy

    with (
        mock.patch.object(_gemm, "numpy_is_faster", lambda *a: False),
        mock.patch.object(chain_numpy.NumpyRunner, "pays", lambda self: False),
        _Record() as mode,
    ):
        call()
    return mode.gemms


def replay(gemms: list[Gemm]) -> Callable[[], None]:
    """A callable running exactly ``gemms`` on fresh contiguous operands (built here, once)."""
    g = torch.Generator().manual_seed(0)
    work = []
    for p in gemms:
        lead = (p.batch,) if p.batch > 1 else ()
        A = torch.rand(*lead, p.M, p.K, generator=g, dtype=p.dtype)
        B = torch.rand(*lead, p.K, p.N, generator=g, dtype=p.dtype)
        out = torch.empty(*lead, p.M, p.N, dtype=p.dtype)
        work.append((torch.bmm if lead else torch.mm, A, B, out))

    def run() -> None:
        for product, A, B, out in work:
            product(A, B, out=out)

    return run


def pass_sizes(gemms: list[Gemm]) -> list[int]:
    """Elements of the one pass after each product of ``gemms`` but the last: the smaller of
    its left factor ``(batch, M, K)`` and its output ``(batch, M, N)``."""
    return [p.batch * p.M * min(p.K, p.N) for p in gemms[:-1]]


def bound(gemms: list[Gemm]) -> Callable[[], None]:
    """A callable running :func:`replay` of ``gemms`` and then one in-place scalar multiply over
    each of :func:`pass_sizes`'s element counts, on fresh contiguous tensors of the products'
    dtypes (all built here, once)."""
    products = replay(gemms)
    work = [torch.rand(size, dtype=p.dtype) for size, p in zip(pass_sizes(gemms), gemms)]

    def run() -> None:
        products()
        for t in work:
            t.mul_(1.0)

    return run


def replay_numpy(gemms: list[Gemm]) -> Callable[[], None]:
    """:func:`replay` through ``np.matmul`` (numpy's BLAS, one thread: ``OPENBLAS_NUM_THREADS``
    is set by the suites before numpy loads), on the same operands."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    work = []
    for p in gemms:
        lead = (p.batch,) if p.batch > 1 else ()
        A = torch.rand(*lead, p.M, p.K, generator=g, dtype=p.dtype).numpy()
        B = torch.rand(*lead, p.K, p.N, generator=g, dtype=p.dtype).numpy()
        work.append((A, B, np.empty((*lead, p.M, p.N), dtype=A.dtype)))

    def run() -> None:
        for A, B, out in work:
            np.matmul(A, B, out=out)

    return run


def replay_xla(gemms: list[Gemm], device) -> Callable[[], list]:
    """:func:`replay` through XLA: one jitted function computing every product (each result
    returned, so none is dropped), its operands on JAX ``device`` (built here, once: the
    ``k``-th product's factors are the ``2k``-th and ``2k+1``-th ``torch.rand`` draws of a
    generator seeded 0)."""
    import jax
    import jax.numpy as jnp

    g = torch.Generator().manual_seed(0)
    operands = []
    for p in gemms:
        lead = (p.batch,) if p.batch > 1 else ()
        for shape in ((*lead, p.M, p.K), (*lead, p.K, p.N)):
            t = torch.rand(*shape, generator=g, dtype=p.dtype)
            operands.append(jax.device_put(jnp.asarray(t.numpy()), device))

    @jax.jit
    def products(*ops):
        return [jnp.matmul(a, b) for a, b in zip(ops[::2], ops[1::2])]

    def run() -> list:
        return jax.block_until_ready(products(*operands))

    return run


def flops(gemms: list[Gemm]) -> int:
    return sum(p.flops for p in gemms)
