"""The chain Laplacian, diagonal and Hessian in numpy (``structured.chain_numpy``'s
``LaplacianPlan``, ``DiagonalPlan``, ``HessianPlan``) behind plain ``hv.laplacian``,
``hv.hessian_diagonal`` and ``hv.hessian`` calls.

From the second call on, a plain Laplacian, diagonal or Hessian of a tanh/sigmoid/sin MLP runs
numpy's kernel when it won a short race against PyTorch's kernel on the first call's data and
equalled its result to round-off there. Every case here forces the race's verdict, so the tests
do not depend on this machine's timings.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

import hessviz as hv
from hessviz import _gemm, _hot, structured
from hessviz._problem import prepare
from hessviz.structured import chain, chain_numpy, kernels
from hessviz.structured.kernels import ChainRunner

D = torch.float64


@pytest.fixture
def numpy_wins(monkeypatch):
    monkeypatch.setattr(chain_numpy, "_wins_race", lambda numpy_call, torch_call: True)


#: op ↦ (public function, numpy plan, PyTorch chain kernel)
OPS = {
    "laplacian": (hv.laplacian, chain_numpy.LaplacianPlan, chain.laplacian),
    "diagonal": (hv.hessian_diagonal, chain_numpy.DiagonalPlan, chain.diagonal),
    "hessian": (hv.hessian, chain_numpy.HessianPlan, chain.hessian),
}


@pytest.fixture(params=list(OPS))
def op(request):
    return request.param


def _call(op, net, X, **kw):
    return OPS[op][0](net, X, batched=True, **kw)


def _kernel(net, X, op, outputs=None):
    entry = _hot.find(net, _hot.request_key(op, "auto", X, True, outputs))
    assert entry is not None
    return entry.kernel


def _reference(net, X, op, outputs=None):
    return _call(op, net, X, outputs=outputs, method="func")


def _data(n: int, B: int = 6, dtype=D, seed: int = 0):
    return torch.randn(B, n, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "sin"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sizes", [[3, 8, 2], [2, 16, 16, 3], [5, 8, 16, 8, 1]])
@pytest.mark.parametrize("outputs", [None, [1, 0], 0], ids=["all", "two", "one"])
def test_plain_calls_run_the_numpy_kernel_that_won_and_equal_autograd(
    numpy_wins, op, act, dtype, sizes, outputs
):
    if isinstance(outputs, list) and sizes[-1] < 2:
        outputs = [0]
    net = hv.mlp(sizes, act, seed=2, dtype=dtype)
    X = _data(sizes[0], dtype=dtype)
    _call(op, net, X, outputs=outputs)
    kernel = _kernel(net, X, op, outputs)
    assert isinstance(kernel, chain_numpy.NumpyRunner) and kernel.op == op
    X2 = X.flip(0) * 1.5  # other points than the proof's
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
    got = _call(op, net, X2, outputs=outputs)
    torch.testing.assert_close(got, _reference(net, X2, op, outputs), **tol)
    unbatched = OPS[op][0](net, X2[0], outputs=outputs)
    torch.testing.assert_close(unbatched, got[0], **tol)


def test_a_lost_race_keeps_the_pytorch_kernel_even_where_numpys_blas_is_faster(op, monkeypatch):
    """These plans run the whole batch in one piece, PyTorch's kernels in cache-sized chunks:
    a faster BLAS alone does not decide for them (unlike the HVP plan)."""
    monkeypatch.setattr(_gemm, "numpy_is_faster", lambda dtype, threads, layout, large=False: True)
    raced = []
    monkeypatch.setattr(chain_numpy, "_wins_race", lambda *calls: raced.append(1) or False)
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=1)
    X = _data(3)
    _call(op, net, X)
    assert type(_kernel(net, X, op)) is ChainRunner and raced == [1]


def test_the_race_times_both_kernels_on_the_first_calls_data(op, monkeypatch):
    """What :func:`chain_numpy._wins_race` is handed: calls of the numpy plan and of PyTorch's
    kernel that give the same results (the first call's)."""
    seen = []

    def race(numpy_call, torch_call):
        with torch.no_grad():  # as the race runs them
            seen.append((numpy_call(), torch_call()))
        return True

    monkeypatch.setattr(chain_numpy, "_wins_race", race)
    net = hv.mlp([2, 8, 8, 1], "tanh", seed=4)
    X = _data(2, B=5)
    expected = _call(op, net, X)
    ((from_numpy, from_torch),) = seen
    torch.testing.assert_close(from_numpy.reshape(expected.shape), expected)
    torch.testing.assert_close(from_torch.reshape(expected.shape), expected)


def test_a_numpy_kernel_that_disagrees_is_never_used(numpy_wins, op, monkeypatch):
    plan = OPS[op][1]
    real = plan._run

    def off_by_a_little(self, *args):
        return real(self, *args) * (1 + 1e-9)  # round-off would be ~1e-16

    monkeypatch.setattr(plan, "_run", off_by_a_little)
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=1)
    X = _data(3)
    _call(op, net, X)
    assert type(_kernel(net, X, op)) is ChainRunner
    torch.testing.assert_close(_call(op, net, X), _reference(net, X, op))


def test_other_activations_keep_the_pytorch_kernel(numpy_wins, op):
    for act in ("softplus", "gelu"):
        net = hv.mlp([3, 8, 8, 2], act, seed=1)
        X = _data(3)
        _call(op, net, X)
        assert type(_kernel(net, X, op)) is ChainRunner, act


def test_another_thread_count_runs_the_pytorch_kernel(numpy_wins, op, monkeypatch):
    net = hv.mlp([3, 8, 8, 2], "sin", seed=6)
    X = _data(3)
    _call(op, net, X)
    kernel = _kernel(net, X, op)
    assert kernel.threads == torch.get_num_threads()
    plan = OPS[op][1]
    real, ran = plan._run, []
    monkeypatch.setattr(plan, "_run", lambda *a: ran.append(1) or real(*a))
    torch.testing.assert_close(_call(op, net, X), _reference(net, X, op))
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        torch.testing.assert_close(_call(op, net, X), _reference(net, X, op))
    finally:
        torch.set_num_threads(threads)
    assert ran == [1]


def test_weights_updated_replaced_or_retyped_are_read(numpy_wins, op):
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=3)
    X = _data(3)
    _call(op, net, X)
    kernel = _kernel(net, X, op)
    assert isinstance(kernel, chain_numpy.NumpyRunner)
    with torch.no_grad():
        net[2].weight.mul_(1.5)  # an optimiser step: same tensor, new values
        net[0].bias.add_(0.25)
    torch.testing.assert_close(_call(op, net, X), _reference(net, X, op))
    net[2].weight = nn.Parameter(net[2].weight.detach() * -1)  # a new tensor
    torch.testing.assert_close(_call(op, net, X), _reference(net, X, op))
    with torch.no_grad():
        net[0].weight.data = net[0].weight.data.t().contiguous().t()  # same values, new strides
    torch.testing.assert_close(_call(op, net, X), _reference(net, X, op))
    assert kernel.layers() is not None  # all still float64 CPU tensors: numpy's kernel runs
    net[2].weight.data = net[2].weight.data.float()  # a float32 weight: PyTorch's kernel
    assert kernel.layers() is None
    with pytest.raises(hv.HessvizError):  # and the full path explains the mixed dtypes
        _call(op, net, X)


def test_concurrent_calls_each_get_their_own_buffers(numpy_wins, op, in_threads):
    net = hv.mlp([4, 32, 32, 3], "tanh", seed=5)
    X = _data(4, B=16)
    _call(op, net, X)
    assert isinstance(_kernel(net, X, op), chain_numpy.NumpyRunner)
    inputs = [(_data(4, B=16, seed=s),) for s in range(8)]
    expected = [_reference(net, x, op) for (x,) in inputs]
    got = in_threads(lambda x: _call(op, net, x), inputs)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize(
    "sizes", [[2, 5, 1], [2, 5, 7, 3], [4, 6, 5, 7, 6, 2], [1, 3, 1], [3, 4, 9, 2]]
)
@pytest.mark.parametrize("bias", [True, False])
def test_the_plan_runs_the_same_numbers_as_the_pytorch_chain_kernel(op, sizes, bias):
    """The kernel on its own, one hidden layer up, with and without biases, against the
    PyTorch chain kernel it stands in for (:func:`hessviz.structured.chain.laplacian`,
    :func:`~hessviz.structured.chain.diagonal`, :func:`~hessviz.structured.chain.hessian`)
    and against the closed forms of one hidden tanh layer: ``u = W2 tanh(W1 x + b1) + b2`` has
    ``∂²u_i/∂x_p∂x_q = Σ_k W2[i, k] tanh''(z_k) W1[k, p] W1[k, q]``; the diagonal is ``p = q``,
    the Laplacian its sum."""
    net = hv.mlp(sizes, "tanh", seed=len(sizes))
    if not bias:
        for lin in net[0::2]:
            lin.bias = None
    X = _data(sizes[0], B=9, seed=len(sizes))
    p, _ = prepare("test", net, X, batched=True, outputs=None)
    ch = kernels._chain(structured.parse(net), p, op)
    assert ch is not None
    sel = tuple(range(sizes[-1]))
    with torch.no_grad():
        expected = OPS[op][2](ch, X, sel)
    got = OPS[op][1](ch, X.shape[0], X.dtype, sel)(X)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if len(sizes) == 3:
        W1, W2 = net[0].weight.detach(), net[2].weight.detach()
        t = torch.tanh(X @ W1.T + (net[0].bias.detach() if bias else 0))  # (B, K)
        second = -2 * t * (1 - t * t)  # tanh''
        closed = torch.einsum("ik,bk,kp,kq->bipq", W2, second, W1, W1)  # (B, m, n, n)
        if op != "hessian":
            closed = closed.diagonal(dim1=-2, dim2=-1)  # (B, m, n)
            closed = closed.sum(-1) if op == "laplacian" else closed
        torch.testing.assert_close(got, closed, rtol=1e-12, atol=1e-12)
    if op == "hessian":  # symmetric exactly, as PyTorch's kernel's mirrored panels are
        assert torch.equal(got, got.mT)


def test_a_plan_whose_buffers_are_refused_keeps_the_pytorch_kernel(numpy_wins, op, monkeypatch):
    """A numpy plan holds buffers for the whole batch; where the system refuses them
    (``MemoryError``), the call still returns the exact result and PyTorch's kernel, which runs
    cache-sized chunks, serves this and later calls."""

    def refuse(self, *shape):
        raise MemoryError("no room for the plan's buffers")

    monkeypatch.setattr(OPS[op][1], "_buffers", refuse)
    net = hv.mlp([3, 8, 2], "tanh", seed=4)
    X = _data(3)
    for x in (X, X.flip(0) * 1.5):
        torch.testing.assert_close(_call(op, net, x), _reference(net, x, op))
    assert type(_kernel(net, X, op)) is not chain_numpy.NumpyRunner


@pytest.mark.parametrize("pairs", [True, False], ids=["pairs", "scaled-rows"])
@pytest.mark.parametrize("sizes", [[2, 16, 16, 3], [1, 3, 1], [5, 8, 6, 1], [4, 6, 5, 7, 6, 2]])
def test_the_hessian_plan_equals_the_pytorch_kernel_in_either_form(sizes, pairs, monkeypatch):
    """:class:`~hessviz.structured.chain_numpy.HessianPlan` forms its terms from products of
    Jacobian row pairs or from scaled rows (:func:`~.chain_numpy.pair_products_pay`): each form,
    forced on the same chains, equals PyTorch's chain kernel to round-off and is exactly
    symmetric; the rule picks the pairs for the tiny model and scaled rows for one output of
    five inputs."""
    assert chain_numpy.pair_products_pay(2, 3) and not chain_numpy.pair_products_pay(5, 1)
    monkeypatch.setattr(chain_numpy, "pair_products_pay", lambda n, m: pairs)
    net = hv.mlp(sizes, "sin", seed=3)
    X = _data(sizes[0], B=7, seed=5)
    p, _ = prepare("test", net, X, batched=True, outputs=None)
    ch = kernels._chain(structured.parse(net), p, "hessian")
    sel = tuple(range(sizes[-1]))[::-1]  # the outputs in another order than the model's
    plan = chain_numpy.HessianPlan(ch, X.shape[0], X.dtype, sel)
    assert plan.pairs is pairs
    with torch.no_grad():
        expected = chain.hessian(ch, X, sel)
    for _ in range(2):  # a second call on the plan's kept buffers
        got = plan(X)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        assert torch.equal(got, got.mT)


@pytest.mark.parametrize("verdict", [False, True], ids=["torch-blas", "numpy-blas"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", [*OPS, "hvp"])
def test_plans_with_products_on_either_blas_equal_autograd(
    numpy_wins, kind, dtype, verdict, monkeypatch
):
    """The plans' products wide enough for :func:`hessviz._gemm.matmul` to consult the BLAS
    verdict (at least THIN rows and HANDOFF multiply-adds: the reverse sweep's, the
    Laplacian's stack, the Jacobians') run on torch's BLAS where it says torch (False) and on
    numpy's otherwise (True): the same numbers either way."""
    monkeypatch.setattr(_gemm, "numpy_is_faster", lambda *args: verdict)
    net = hv.mlp([24, 128, 128, 5], "tanh", seed=7, dtype=dtype)
    X, V = _data(24, B=48, dtype=dtype, seed=3), _data(24, B=48, dtype=dtype, seed=4)

    def call(x, method="auto"):
        if kind == "hvp":
            return hv.hvp(net, x, V, batched=True, method=method)
        return _call(kind, net, x, method=method)

    call(X)
    assert isinstance(_kernel(net, X, kind), chain_numpy.NumpyRunner)
    X2 = X.flip(0) * 1.5  # other points than the proof's
    with mock.patch.object(_gemm.torch, "mm", wraps=torch.mm) as mm:
        got = call(X2)
    assert (mm.call_count > 0) is not verdict, mm.call_count
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(got, call(X2, method="func"), **tol)
