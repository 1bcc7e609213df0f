r"""Matrix products on the CPU: torch's BLAS or numpy's, whichever is faster on this machine.

The chain kernels (:mod:`hessviz.structured.chain`) spend most of their time in GEMMs of tall,
narrow shapes — ``(B·rows, K) @ (K, K)`` with ``K`` a layer width of 16-256. PyTorch's CPU
wheels call MKL; numpy's wheels ship OpenBLAS. The two differ per machine and per memory order.
On the AMD EPYC cores these benchmarks ran on (one thread each), float64 ``(192, 64) @ (64, 64)``
ran at 33 GFLOP/s in ``torch.mm`` and 55 in ``np.matmul`` with a row-major right factor (a
reverse sweep's ``d @ W``), 40 and 43 with a column-major one (a Linear layer's ``a @ Wᵀ``),
and ``(1024, 64) @ (64, 64)ᵀ`` at 41 and 45; float32 was level (~94).

:func:`mm`, :func:`bmm` and :func:`addmm` are ``torch.mm``/``torch.bmm``/``torch.addmm`` with
``out=``; they hand a product to ``np.matmul`` (zero-copy views of the same memory) only when
all of these hold:

- not traced (``torch.compile``, ``torch.export``: torch's ops only), plain (no subclass) real
  CPU float32/float64 tensors of one dtype, no autograd history to keep (grad mode off, or no
  operand requires grad);
- matrices laid out as BLAS reads them (one unit stride), ``out`` row-major;
- at least :data:`MIN_WORK` multiply-adds (below that numpy's ~2 µs extra call cost wins);
- :func:`numpy_is_faster` says so for this dtype, torch thread count, memory order of the
  right factor and size class (one matrix's ``M·K·N`` below or above :data:`LARGE`): once per
  process, it checks numpy's product against torch's on a probe and times both on a
  kernel-shaped product of that class; numpy is taken only if it agrees and is
  :data:`MARGIN` times faster (small products: on both probes). The classes differ per
  machine: on an Intel Xeon with AVX-512 (one thread, float64) numpy and torch were level at
  ``(192, 64, 64)``, but MKL ran ``(256, 128, 128)`` at 80 GFLOP/s against OpenBLAS's 49 and
  ``(1280, 128, 128)``-like kernel products 1.3–1.9× faster, while on the AMD EPYC numpy led
  at both sizes.

The environment variable ``HESSVIZ_GEMM`` overrides the timing: ``torch`` never takes numpy,
``numpy`` takes it wherever it agrees (the agreement check stays); ``auto`` (default) measures.
Either backend computes the same product; results differ by rounding only.
"""

from __future__ import annotations

import functools
import math
import os
import time

import numpy as np
import torch

#: ``M·K·N`` below which ``torch.mm`` is used whatever the backend (numpy costs ~2 µs more per
#: call: ``(64, 16) @ (16, 16)`` took 3.0 µs in torch and 4.4 µs with numpy here)
MIN_WORK = 1 << 16
#: one matrix's ``M·K·N`` from which a product is timed by the large probe (a batch of products
#: counts one of them: numpy runs a batch as a loop of single products)
LARGE = 1 << 22
#: rows below which :func:`matmul` leaves a product to numpy whatever the verdict: MKL ran
#: float64 ``(M, 784) @ (784, 256)ᵀ`` at M = 4-16 1.2-4.7× slower than OpenBLAS here (at M = 64
#: 1.4× faster); such thin products are a small batch's first layer
THIN = 16
#: ``M·K·N`` from which :func:`matmul` hands a numpy kernel's product to torch where the verdict
#: says so: below it, torch's call (three views and a dispatch, ~6 µs) costs more than MKL's
#: lead gains — ``(384, 16) @ (16, 16)`` took 8 µs in numpy and 14 in torch, ``(64, 64) @
#: (64, 128)ᵀ`` 38 and 32
HANDOFF = 1 << 19
#: how much faster numpy's product must be on the timing probe to be taken
MARGIN = 1.05
#: ``HESSVIZ_GEMM``'s values
CHOICES = ("auto", "torch", "numpy")
ENV = "HESSVIZ_GEMM"

#: the torch dtypes numpy computes in too (its float32 and float64): the only ones hessviz hands
#: to numpy (products here, ``tanh`` in :func:`hessviz.ops.tanh_into`, the numpy chain kernel)
NUMPY_DTYPES = frozenset({torch.float32, torch.float64})
#: numpy's float dtypes → torch's
_TORCH_DTYPES = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}
#: the tensor types whose memory ``numpy()`` views (a parameter is one)
PLAIN = frozenset({torch.Tensor, torch.nn.Parameter})


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` (``(M, K) @ (K, N) → (M, N)``), written into ``out`` when given; returns it."""
    if _numpy_takes(a, b, out, 2):
        if out is None:
            out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype)
        np.matmul(array(a), array(b), out=out.numpy())
        return out
    return torch.mm(a, b, out=out)


def bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` per batch entry (``(B, M, K) @ (B, K, N) → (B, M, N)``; either factor may be
    an ``expand`` view, batch stride 0), written into ``out`` when given; returns it."""
    if _numpy_takes(a, b, out, 3):
        if out is None:
            out = torch.empty(a.shape[0], a.shape[1], b.shape[2], dtype=a.dtype)
        np.matmul(array(a), array(b), out=out.numpy())
        return out
    return torch.bmm(a, b, out=out)


def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``bias + a @ b`` into ``out`` (``(M, N)``; ``bias`` broadcasts to it); returns ``out``."""
    if (
        _numpy_takes(a, b, out, 2)
        and bias.dtype == a.dtype
        and bias.device.type == "cpu"
        and not (bias.requires_grad and torch.is_grad_enabled())
    ):
        np.matmul(array(a), array(b), out=out.numpy())
        return out.add_(bias)
    return torch.addmm(bias, a, b, out=out)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` of 2-D numpy arrays of one float dtype (``(M, K) @ (K, N) → (M, N)``), into
    ``out`` when given (row-major); returns it. What the numpy kernels
    (:mod:`hessviz.structured.chain_numpy`) call for their products: torch's BLAS runs it, on
    views of the same memory, where :func:`numpy_is_faster` says torch's is the faster one for
    its class and it has at least :data:`THIN` rows and :data:`HANDOFF` multiply-adds; numpy's
    otherwise. Measured here (one thread, float64): MKL ran ``(2112, 128) @ (128, 128)ᵀ`` — a
    Laplacian's stacked rows — 1.5× faster than OpenBLAS, but ``(4, 784) @ (784, 256)ᵀ`` 4.7×
    slower (57 µs against 270)."""
    M, K = a.shape
    N = b.shape[1]
    if (
        M >= THIN
        and M * K * N >= HANDOFF
        and not numpy_is_faster(
            _TORCH_DTYPES[a.dtype],
            torch.get_num_threads(),
            "N" if b.strides[1] == b.itemsize else "T",
            M * K * N >= LARGE,
        )
    ):
        if out is None:
            out = np.empty((M, N), a.dtype)
        torch.mm(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))
        return out
    return np.matmul(a, b, out=out)


def _numpy_takes(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None, ndim: int) -> bool:
    """Whether ``a @ b`` (``ndim``: 2, or 3 for a batch of products) may go to numpy, into
    ``out`` (see the module's list)."""
    if (
        a.ndim != ndim
        or b.ndim != ndim
        or a.shape[:-1].numel() * a.shape[-1] * b.shape[-1] < MIN_WORK
    ):
        return False  # first: small products leave at once
    if torch.compiler.is_compiling():  # traced: torch's ops only
        return False
    dtype = a.dtype
    if dtype not in NUMPY_DTYPES or not numpy_is_ever_faster(dtype, torch.get_num_threads()):
        return False  # where torch's products are the faster ones, nothing else counts
    shape = (*a.shape[:-1], b.shape[-1])
    if (
        type(a) not in PLAIN  # a tensor subclass (fake, wrapped, distributed…): torch's op
        or type(b) not in PLAIN
        or (out is not None and type(out) not in PLAIN)
        or not a.is_cpu
        or b.dtype != dtype
        or not b.is_cpu
        or a.shape[-1] != b.shape[-2]
        or a.shape[:-2] != b.shape[:-2]
        or not (_blas_layout(a) and _blas_layout(b))
    ):
        return False
    if out is not None and not (
        out.dtype == dtype
        and out.is_cpu
        and out.shape == shape
        and out.stride(-1) == 1
        and out.stride(-2) >= shape[-1]
        and not out.requires_grad
    ):
        return False
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return False
    large = a.shape[-2] * a.shape[-1] * b.shape[-1] >= LARGE
    layout = "N" if b.stride(-1) == 1 else "T"
    return numpy_is_faster(dtype, torch.get_num_threads(), layout, large)


def _blas_layout(t: torch.Tensor) -> bool:
    """Each matrix (the last two dimensions) row- or column-major with a leading dimension
    BLAS accepts: what numpy passes to BLAS without a copy or its own slow loop."""
    r, c = t.shape[-2:]
    sr, sc = t.stride()[-2:]
    return (sc == 1 and sr >= max(c, 1)) or (sr == 1 and sc >= max(r, 1))


def array(t: torch.Tensor) -> np.ndarray:
    """A numpy view of ``t``'s memory (a parameter's ``weight`` requires grad: detached)."""
    return (t.detach() if t.requires_grad else t).numpy()


def finite_product(a: np.ndarray, b: np.ndarray) -> bool:
    """``a · b`` (all entries, as flat vectors of one size) is finite: how a repeated call
    proves its inputs finite (``b = a`` for ``x``, ``b = v`` for an HVP's ``x`` and ``v``).

    ``x · x`` is a sum of squares: NaN or +inf whenever ``x`` holds a NaN or an infinity, never
    cancelling; ``x · v`` is NaN or ±inf whenever either does (``inf · 0`` is NaN, ``inf − inf``
    is NaN). A product that only overflows reads as not finite: the caller then takes the path
    that checks element by element. ``np.vdot`` reads the memory once (2.5–5 µs at batch 64
    to 4096 here, against ~6–20 µs for a torch reduction and its read-back) and, unlike
    ``np.dot``, raises no floating-point warnings on the way."""
    return math.isfinite(np.vdot(a, b))


def choice() -> str:
    """``HESSVIZ_GEMM`` as set (``auto`` when unset or empty); anything else is an error."""
    from ._errors import HessvizError

    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise HessvizError(
            f"{ENV}={os.environ[ENV]!r} is not a GEMM backend choice; use one of "
            f"{', '.join(CHOICES)} (or leave it unset for 'auto')."
        )
    return value


#: the timing probes of :func:`numpy_is_faster`, ``(M, K, N)`` per layout of the right factor:
#: ``"N"`` row-major (a reverse sweep's ``d @ W``), ``"T"`` column-major (a Linear layer's
#: ``a @ Wᵀ``, forward; numpy's gain there shows at the tall products of a Laplacian's stack);
#: ``LARGE_PROBE`` for products from :data:`LARGE` on (Gram panels, ``(PᵀP) G``, wide layers)
PROBES = {"N": (192, 64, 64), "T": (1024, 64, 64)}
LARGE_PROBE = (256, 128, 128)


@functools.cache
def numpy_is_faster(dtype: torch.dtype, threads: int, layout: str, large: bool = False) -> bool:
    """Whether :func:`mm` hands ``dtype`` products whose right factor has ``layout`` (``"N"``:
    row-major, ``"T"``: column-major) to numpy while torch runs ``threads`` threads; ``large``:
    products of one matrix's ``M·K·N`` from :data:`LARGE` on. numpy's product must agree with
    torch's (:func:`numpy_agrees`) and, under ``HESSVIZ_GEMM=auto``, run the :data:`PROBES`
    product (``large``: :data:`LARGE_PROBE`) :data:`MARGIN` times faster (best of interleaved
    rounds, a few ms once per process). Small products go to numpy only where it also wins
    the large probe: on an AVX-512 Xeon the small probe was a tie (±10 % run to run) while MKL
    led by 1.3–1.9× at every kernel shape between it and the large one."""
    wanted = choice()
    if wanted == "torch" or not numpy_agrees(dtype):
        return False
    if wanted == "numpy":
        return True
    if not large and not numpy_is_faster(dtype, threads, layout, True):
        return False  # faster on small products only: not trusted at the sizes in between
    M, K, N = LARGE_PROBE if large else PROBES[layout]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(M, K, generator=gen, dtype=dtype)
    b = torch.randn(K, N, generator=gen, dtype=dtype)
    if layout == "T":
        b = b.T.contiguous().T
    out = torch.empty(M, N, dtype=dtype)
    an, bn, on = a.numpy(), b.numpy(), out.numpy()
    runs = {"torch": lambda: torch.mm(a, b, out=out), "numpy": lambda: np.matmul(an, bn, out=on)}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(7):
        for name, run in runs.items():
            run()  # warm
            start = time.perf_counter()
            for _ in range(3):
                run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best["torch"] >= MARGIN * best["numpy"]


def numpy_is_ever_faster(dtype: torch.dtype, threads: int) -> bool:
    """Whether :func:`numpy_is_faster` says so for any layout and size class of ``dtype``
    products at ``threads`` (its cached verdicts, ~0.2 µs each): where it does not (MKL ahead
    on every probe), :func:`mm` and its kin skip their other checks (~5 µs a product)."""
    return (
        numpy_is_faster(dtype, threads, "N", True)
        or numpy_is_faster(dtype, threads, "T", True)
        or numpy_is_faster(dtype, threads, "N", False)
        or numpy_is_faster(dtype, threads, "T", False)
    )


@functools.cache
def numpy_agrees(dtype: torch.dtype) -> bool:
    """Whether ``np.matmul`` gives ``torch.mm``'s product in ``dtype``, on a probe with both
    layouts of each factor and a row-major view with a leading dimension above its width: every
    entry within ``4·K·eps·(|A| |B|)`` of torch's (the GEMM rounding bound, with room)."""
    gen = torch.Generator().manual_seed(1)
    eps = torch.finfo(dtype).eps
    a_full = torch.randn(37, 70, generator=gen, dtype=dtype)
    a = a_full[:, :61]  # leading dimension 70
    for b in (
        torch.randn(61, 29, generator=gen, dtype=dtype),
        torch.randn(29, 61, generator=gen, dtype=dtype).T,
    ):
        for left in (a, a.T.contiguous().T):
            try:
                got = torch.from_numpy(np.matmul(left.numpy(), b.numpy()))
            except Exception:  # noqa: BLE001 - any trouble means: keep torch's
                return False
            expected = torch.mm(left, b)
            bound = 4 * left.shape[1] * eps * torch.mm(left.abs(), b.abs())
            if got.shape != expected.shape or not bool(((got - expected).abs() <= bound).all()):
                return False
    return True


def summary() -> str:
    """Which library runs the kernels' products in this process, per dtype, memory order of
    the right factor and size class (what a benchmark states in its header), e.g.
    ``"HESSVIZ_GEMM=auto: float64 numpy / numpy / torch / torch, float32 …
    (right factor row-major / column-major, below / from LARGE)"``."""
    threads = torch.get_num_threads()
    per = [
        str(dtype).removeprefix("torch.")
        + " "
        + " / ".join(
            "numpy" if numpy_is_faster(dtype, threads, layout, large) else "torch"
            for large in (False, True)
            for layout in "NT"
        )
        for dtype in (torch.float64, torch.float32)
    ]
    return (
        f"{ENV}={choice()}: {', '.join(per)} (right factor row-major / column-major, "
        f"below / from {LARGE} multiply-adds per matrix)"
    )
