"""The GEMM backend choice (:mod:`hessviz._gemm`): numpy's BLAS where it is faster.

A product handed to numpy must equal torch's up to rounding, in every layout the kernels pass,
written through ``out``; it must stay with torch while traced, under autograd, for small or
odd-layout products, other dtypes, and when numpy's product fails its agreement probe.
``HESSVIZ_GEMM`` picks the backend (``torch``, ``numpy``, ``auto``), and anything else is a
clear error. The chain kernels with numpy's products taken equal torch.func.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from cases import batched_call

import hessviz as hv
from hessviz import HessvizError, _gemm


@pytest.fixture
def backend(monkeypatch):
    """Set ``HESSVIZ_GEMM`` for one test (the decisions are cached: cleared around it)."""

    def use(value: str) -> None:
        monkeypatch.setenv(_gemm.ENV, value)
        _gemm.numpy_is_faster.cache_clear()
        for dtype in (torch.float32, torch.float64):
            _gemm.numpy_agrees(dtype)  # its probe runs now, not under a test's spy

    yield use
    _gemm.numpy_is_faster.cache_clear()


def _spy():
    """``np.matmul`` patched with a counting wrapper (what ``_gemm`` calls)."""
    return mock.patch.object(_gemm.np, "matmul", wraps=np.matmul)


def _operands(M, K, N, dtype, right="N", left="N"):
    gen = torch.Generator().manual_seed(M + K + N)
    a = torch.randn(M, K, dtype=dtype, generator=gen)
    b = torch.randn(K, N, dtype=dtype, generator=gen)
    if left == "T":
        a = a.T.contiguous().T
    if left == "padded":  # row-major, leading dimension K + 5
        a = torch.randn(M, K + 5, dtype=dtype, generator=gen)[:, :K]
    if right == "T":
        b = b.T.contiguous().T
    return a, b


def _close(got, a, b):
    expected = torch.mm(a.double(), b.double())
    eps = torch.finfo(a.dtype).eps
    bound = 4 * a.shape[1] * eps * torch.mm(a.double().abs(), b.double().abs())
    assert ((got.double() - expected).abs() <= bound).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("right", ["N", "T"])
@pytest.mark.parametrize("left", ["N", "T", "padded"])
def test_numpy_product_equals_torch_in_every_layout(dtype, right, left, backend):
    backend("numpy")
    a, b = _operands(96, 64, 48, dtype, right, left)
    out = torch.full((96, 48), float("nan"), dtype=dtype)
    with _spy() as spy:
        got = _gemm.mm(a, b, out=out)
        fresh = _gemm.mm(a, b)
    assert spy.call_count == 2 and got is out
    _close(got, a, b)
    torch.testing.assert_close(fresh, got, rtol=0, atol=0)


def test_addmm_adds_the_bias_and_writes_into_a_row_of_a_bigger_buffer(backend):
    backend("numpy")
    a, b = _operands(64, 64, 32, torch.float64, right="T")
    bias = torch.randn(32, dtype=torch.float64)
    buf = torch.zeros(64, 3, 32, dtype=torch.float64)
    out = buf[:, 1]  # rows 96 apart: row-major with a leading dimension above its width
    with _spy() as spy:
        got = _gemm.addmm(bias, a, b, out=out)
    assert spy.call_count == 1 and got is out
    torch.testing.assert_close(buf[:, 1], torch.addmm(bias, a, b), rtol=1e-14, atol=1e-13)
    assert not buf[:, 0].any() and not buf[:, 2].any()  # nothing else written


@pytest.mark.parametrize("shared", ["left", "right", "none"])
def test_batched_products_with_a_shared_factor_and_a_panel_out(shared, backend):
    """``bmm`` as the stem and Gram kernels call it: one factor ``expand``ed over the batch
    (stride 0) or a transposed view, the result written into a panel of a bigger buffer."""
    backend("numpy")
    gen = torch.Generator().manual_seed(4)
    B, M, K, N = 3, 40, 64, 56
    a = torch.randn(B, M, K, dtype=torch.float64, generator=gen)
    b = torch.randn(B, N, K, dtype=torch.float64, generator=gen).mT  # column-major matrices
    if shared == "left":
        a = torch.randn(M, K, dtype=torch.float64, generator=gen).expand(B, M, K)
    if shared == "right":
        b = torch.randn(K, N, dtype=torch.float64, generator=gen).expand(B, K, N)
    buf = torch.zeros(B, M, N + 8, dtype=torch.float64)
    with _spy() as spy:
        got = _gemm.bmm(a, b, out=buf[:, :, 8:])
        fresh = _gemm.bmm(a, b)
    assert spy.call_count == 2
    for i in range(B):
        _close(got[i], a[i], b[i])
    torch.testing.assert_close(fresh, got, rtol=0, atol=0)
    assert not buf[:, :, :8].any()  # nothing written outside the panel


class _Tagged(torch.Tensor):
    """A tensor subclass (as libraries wrap tensors): its memory is not numpy's to view."""


@pytest.mark.parametrize(
    "case",
    ["small", "float16", "grad", "strided", "out_transposed", "torch_env", "disagrees", "subclass"],
)
def test_torch_keeps_the_product_where_numpy_is_not_safe(case, backend, monkeypatch):
    backend("numpy")
    dtype = torch.float16 if case == "float16" else torch.float64
    a, b = _operands(96, 64, 48, dtype)
    out = torch.empty(96, 48, dtype=dtype)
    if case == "small":
        a, b = _operands(8, 8, 8, dtype)
        out = torch.empty(8, 8, dtype=dtype)
    if case == "grad":
        b.requires_grad_(True)
        out = None
    if case == "strided":  # no unit stride: numpy would copy or loop on its own
        a = torch.randn(96, 128, dtype=dtype)[:, ::2]
    if case == "out_transposed":
        out = torch.empty(48, 96, dtype=dtype).T
    if case == "torch_env":
        backend("torch")
    if case == "disagrees":
        monkeypatch.setattr(_gemm, "numpy_agrees", lambda dtype: False)
    if case == "subclass":
        a = a.as_subclass(_Tagged)
    with _spy() as spy:
        got = _gemm.mm(a, b, out=out)
    assert spy.call_count == 0
    if case == "grad":
        assert got.requires_grad  # autograd history kept: torch's op ran
    _close(got.detach().as_subclass(torch.Tensor), a.as_subclass(torch.Tensor), b.detach())


def test_grad_mode_off_hands_a_parameter_to_numpy(backend):
    backend("numpy")
    lin = torch.nn.Linear(64, 64, dtype=torch.float64)
    a = torch.randn(128, 64, dtype=torch.float64)
    with torch.no_grad(), _spy() as spy:
        got = _gemm.addmm(lin.bias, a, lin.weight.T, out=torch.empty(128, 64, dtype=torch.float64))
    assert spy.call_count == 1 and not got.requires_grad
    torch.testing.assert_close(got, lin(a).detach(), rtol=1e-13, atol=1e-13)


def test_a_bias_with_autograd_history_keeps_torch_and_its_error(backend):
    """Under autograd a bias that requires grad goes to ``torch.addmm``, which refuses ``out=``
    (numpy's product plus an in-place add would record history into the buffer instead)."""
    backend("numpy")
    a, b = _operands(96, 64, 48, torch.float64)
    bias = torch.randn(48, dtype=torch.float64, requires_grad=True)
    out = torch.empty(96, 48, dtype=torch.float64)
    with _spy() as spy, pytest.raises(RuntimeError, match="automatic differentiation"):
        _gemm.addmm(bias, a, b, out=out)
    assert spy.call_count == 0


def test_traced_products_are_torch_ops(backend):
    backend("numpy")
    a, b = _operands(96, 64, 48, torch.float64)

    @torch.compile(fullgraph=True, backend="eager")  # a graph break would raise
    def product(a, b):
        return _gemm.mm(a, b, out=torch.empty(96, 48, dtype=torch.float64)) * 2

    with _spy() as spy:
        got = product(a, b)
    assert spy.call_count == 0
    _close(got / 2, a, b)


def test_the_agreement_probe_rejects_a_wrong_product(monkeypatch):
    probe = _gemm.numpy_agrees.__wrapped__  # the uncached check
    assert probe(torch.float64) and probe(torch.float32)
    monkeypatch.setattr(_gemm.np, "matmul", lambda a, b: np.matmul(a, b) * (1 + 1e-9))
    assert not probe(torch.float64)
    monkeypatch.setattr(_gemm.np, "matmul", lambda a, b: np.matmul(a, b).T.copy().T[:, :-1])
    assert not probe(torch.float64)  # wrong shape

    def raises(a, b):
        raise RuntimeError("no BLAS")

    monkeypatch.setattr(_gemm.np, "matmul", raises)
    assert not probe(torch.float32)


def test_auto_measures_once_per_dtype_threads_layout_and_size(backend, monkeypatch):
    backend("auto")
    calls = []
    monkeypatch.setattr(_gemm, "numpy_agrees", lambda dtype: calls.append(dtype) or True)
    for large in (False, True):
        for layout in ("N", "T"):
            first = _gemm.numpy_is_faster(torch.float64, 1, layout, large)
            assert isinstance(first, bool)
            assert _gemm.numpy_is_faster(torch.float64, 1, layout, large) is first  # cached
    assert calls == [torch.float64] * 4
    monkeypatch.setattr(_gemm, "numpy_agrees", lambda dtype: False)
    _gemm.numpy_is_faster.cache_clear()
    assert not _gemm.numpy_is_faster(torch.float64, 1, "N")  # never timed: it disagrees


@pytest.mark.parametrize(
    ("shape", "large"),
    [
        ((96, 64, 48), False),
        ((256, 256, 256), True),
        ((1024, 64, 64), True),  # exactly LARGE multiply-adds
        ((1023, 64, 64), False),
        ((6, 64, 64, 64), False),  # a batch of small products is small, whatever its size
        ((2, 256, 256, 256), True),
    ],
)
def test_a_product_is_timed_by_the_probe_of_its_size(shape, large, monkeypatch):
    """Products of one matrix's ``M·K·N`` from ``LARGE`` on ask the large probe: where torch's
    BLAS wins only on large products (MKL on an AVX-512 Xeon), they stay with torch."""
    asked = []
    monkeypatch.setattr(
        _gemm, "numpy_is_faster", lambda dtype, threads, layout, big=False: asked.append(big) or big
    )
    *lead, M, K, N = shape
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(*lead, M, K, dtype=torch.float64, generator=gen)
    b = torch.randn(*lead, K, N, dtype=torch.float64, generator=gen)
    with _spy() as spy:
        got = _gemm.bmm(a, b) if lead else _gemm.mm(a, b)
    # (first the classes :func:`numpy_is_ever_faster` asks, large ones first, until a yes)
    assert asked[-1] is large and spy.call_count == int(large)
    torch.testing.assert_close(got, a @ b, rtol=1e-12, atol=1e-10)


def test_products_skip_their_checks_where_torch_wins_every_class(monkeypatch):
    """Where no class goes to numpy, a product asks the verdicts and nothing about its
    operands' layout (~5 µs a product on the torch kernels' path)."""
    monkeypatch.setattr(_gemm, "numpy_is_faster", lambda *args: False)
    a, b = _operands(64, 64, 64, torch.float64)
    with (
        mock.patch.object(_gemm, "_blas_layout", wraps=_gemm._blas_layout) as layout,
        _spy() as spy,
    ):
        got = _gemm.mm(a, b)
    assert layout.call_count == 0 and spy.call_count == 0
    _close(got, a, b)
    monkeypatch.setattr(_gemm, "numpy_is_faster", lambda dtype, threads, lay, large: large)
    with mock.patch.object(_gemm, "_blas_layout", wraps=_gemm._blas_layout) as layout:
        _gemm.mm(a, b)
    assert layout.call_count == 2  # a class goes to numpy: the operands are checked


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("right", ["N", "T"])
def test_the_numpy_kernels_products_go_where_the_verdict_and_their_rows_say(
    dtype, right, monkeypatch
):
    """:func:`hessviz._gemm.matmul` (the numpy kernels' products, on arrays): torch's BLAS
    where the verdict for the product's class says torch and it has at least THIN rows and
    HANDOFF multiply-adds; numpy's otherwise; the same product either way, into ``out``."""
    asked = []

    def verdict(dt, threads, layout, large):
        asked.append((dt, layout, large))
        return numpy_wins

    monkeypatch.setattr(_gemm, "numpy_is_faster", verdict)
    thin = _gemm.THIN
    K, N = 256, 128
    assert thin * K * N >= _gemm.HANDOFF
    for M, numpy_wins, torch_runs in [
        (thin, False, True),
        (thin - 1, False, False),  # thin: numpy whatever the verdict
        (thin, True, False),
        (4096, False, True),
    ]:
        a, b = _operands(M, K, N, dtype, right=right)
        out = np.full((M, N), np.nan, dtype=a.numpy().dtype)
        asked.clear()
        with mock.patch.object(_gemm.torch, "mm", wraps=torch.mm) as mm:
            got = _gemm.matmul(a.numpy(), b.numpy(), out=out)
        assert got is out and mm.call_count == int(torch_runs), (M, numpy_wins)
        if M >= thin:
            assert asked == [(dtype, right, M * K * N >= _gemm.LARGE)]
        _close(torch.from_numpy(out), a, b)
    small = _operands(thin, 64, 64, dtype, right=right)  # below HANDOFF: numpy, no verdict asked
    assert thin * 64 * 64 < _gemm.HANDOFF
    asked.clear()
    _close(torch.from_numpy(_gemm.matmul(small[0].numpy(), small[1].numpy())), *small)
    assert asked == []


class _Clock:
    """What ``_gemm`` reads as ``time.perf_counter``: it moves only when a product runs, one
    tick per product and a thousand for a slowed one, so a race's winner is set by the test
    alone (sleeps lost to a busy machine's scheduling once)."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def slowed(self, f, shapes):
        """``f`` ticking the clock, a thousand ticks for products whose ``(M, K, N)`` is in
        ``shapes``."""

        def product(a, b, out):
            self.now += 1e3 if (*a.shape, b.shape[1]) in shapes else 1.0
            return f(a, b, out=out)

        return product


@pytest.mark.parametrize("numpy_loses", ["nowhere", "large", "small"])
def test_small_products_go_to_numpy_only_where_it_wins_both_probes(
    numpy_loses, backend, monkeypatch
):
    """A BLAS faster on the small probe alone is not trusted with small products (a tie there
    decided by noise sent Xeon products to the slower BLAS); the large probe decides alone."""
    backend("auto")
    monkeypatch.setattr(_gemm, "numpy_agrees", lambda dtype: True)
    clock = _Clock()
    monkeypatch.setattr(_gemm, "time", clock)
    probes = {_gemm.LARGE_PROBE, _gemm.PROBES["N"]}
    timed = []
    slow_numpy = {"nowhere": set(), "large": {_gemm.LARGE_PROBE}, "small": {_gemm.PROBES["N"]}}
    monkeypatch.setattr(_gemm.torch, "mm", clock.slowed(torch.mm, probes - slow_numpy[numpy_loses]))
    numpy_product = clock.slowed(np.matmul, slow_numpy[numpy_loses])

    def counted(a, b, out):
        timed.append((*a.shape, b.shape[1]))
        return numpy_product(a, b, out=out)

    monkeypatch.setattr(_gemm.np, "matmul", counted)
    small = _gemm.numpy_is_faster(torch.float64, 1, "N", False)
    assert small is (numpy_loses == "nowhere")
    assert _gemm.numpy_is_faster(torch.float64, 1, "N", True) is (numpy_loses != "large")
    assert (_gemm.PROBES["N"] in timed) is (numpy_loses != "large")  # never timed in vain
    assert _gemm.LARGE_PROBE[0] * _gemm.LARGE_PROBE[1] * _gemm.LARGE_PROBE[2] >= _gemm.LARGE
    assert _gemm.PROBES["N"][0] * _gemm.PROBES["N"][1] * _gemm.PROBES["N"][2] < _gemm.LARGE


@pytest.mark.parametrize("value", ["mkl", "openblas", "1"])
def test_an_unknown_backend_is_a_clear_error(value, backend):
    backend(value)
    a, b = _operands(96, 64, 48, torch.float64)
    with pytest.raises(HessvizError, match=rf"HESSVIZ_GEMM='{value}'.*auto, torch, numpy"):
        _gemm.mm(a, b)


@pytest.mark.parametrize("op", ["hessian", "diagonal", "laplacian", "hvp"])
@pytest.mark.parametrize("sizes", [[5, 64, 64, 64, 3], [300, 128, 128, 2]], ids=["chain", "stem"])
def test_kernels_with_numpy_products_equal_torch_func(op, sizes, backend):
    """Every layer's product is above ``MIN_WORK``. With 300 inputs the
    first layer narrows (the stem kernels: ``PᵀP``, ``P H Pᵀ``, batched products)."""
    backend("numpy")
    net = hv.mlp(sizes, activation="tanh", seed=2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    B = 48 if sizes[0] < 100 else 4
    X = torch.randn(B, sizes[0], dtype=torch.float64, generator=gen)
    V = torch.randn(B, sizes[0], dtype=torch.float64, generator=gen)
    call = batched_call(op, net, X, V)
    with _spy() as spy:
        got = call()
    assert spy.call_count >= 2
    torch.testing.assert_close(got, call(method="func"), rtol=1e-10, atol=1e-12)
