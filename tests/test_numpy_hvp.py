"""The chain HVP in numpy (:mod:`hessviz.structured.chain_numpy`) behind plain ``hv.hvp`` calls.

From the second call on, a plain HVP of a tanh/sigmoid/sin MLP runs numpy's kernel when it was
proved on the first call's data (equal to the PyTorch kernel's result to round-off) and numpy's
BLAS measured faster for the dtype, or the numpy kernel won its race against PyTorch's on that
data. Every case here forces the speed verdicts, so the tests do not depend on this machine's
timings.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hessviz as hv
from hessviz import _gemm, _hot
from hessviz.structured import chain_numpy
from hessviz.structured.kernels import ChainRunner

D = torch.float64


@pytest.fixture
def numpy_faster(monkeypatch):
    monkeypatch.setattr(_gemm, "numpy_is_faster", lambda dtype, threads, layout, large=False: True)


def _kernel(net, X, outputs=None):
    entry = _hot.find(net, _hot.request_key("hvp", "auto", X, True, outputs))
    assert entry is not None
    return entry.kernel


def _reference(net, X, V, outputs=None):
    return hv.hvp(net, X, V, batched=True, outputs=outputs, method="func")


def _data(n: int, B: int = 6, dtype=D, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, n, dtype=dtype, generator=gen), torch.randn(
        B, n, dtype=dtype, generator=gen
    )


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "sin"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sizes", [[3, 8, 2], [3, 16, 16, 3], [5, 8, 16, 8, 4]])
@pytest.mark.parametrize("outputs", [None, [2, 0], 1], ids=["all", "two", "one"])
def test_plain_hvps_run_the_proved_numpy_kernel_and_equal_autograd(
    numpy_faster, act, dtype, sizes, outputs
):
    if isinstance(outputs, list) and max(outputs) >= sizes[-1]:
        outputs = [sizes[-1] - 1, 0]
    net = hv.mlp(sizes, act, seed=2, dtype=dtype)
    X, V = _data(sizes[0], dtype=dtype)
    hv.hvp(net, X, V, batched=True, outputs=outputs)
    assert isinstance(_kernel(net, X, outputs), chain_numpy.NumpyRunner)
    X2, V2 = X.flip(0) * 1.5, V * -2  # other points than the proof's
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
    got = hv.hvp(net, X2, V2, batched=True, outputs=outputs)
    torch.testing.assert_close(got, _reference(net, X2, V2, outputs), **tol)
    unbatched = hv.hvp(net, X2[0], V2[0], outputs=outputs)
    torch.testing.assert_close(unbatched, got[0], **tol)


def test_without_faster_blas_or_a_won_race_the_pytorch_kernel_stays(monkeypatch):
    monkeypatch.setattr(
        _gemm, "numpy_is_faster", lambda dtype, threads, layout, large=False: layout == "N"
    )
    raced = []
    monkeypatch.setattr(chain_numpy, "_wins_race", lambda *calls: raced.append(1) or False)
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=1)
    X, V = _data(3)
    hv.hvp(net, X, V, batched=True)
    kernel = _kernel(net, X)
    assert type(kernel) is ChainRunner and raced == [1]


def test_a_kernel_that_won_its_race_runs_at_that_thread_count_only(monkeypatch):
    """numpy's BLAS slower, the numpy kernel faster as a whole (its race forced won): plain
    HVPs run it while torch's thread count is the race's, PyTorch's kernel after a change."""
    monkeypatch.setattr(_gemm, "numpy_is_faster", lambda dtype, threads, layout, large=False: False)
    monkeypatch.setattr(chain_numpy, "_wins_race", lambda numpy_call, torch_call: True)
    net = hv.mlp([3, 8, 8, 2], "sigmoid", seed=1)
    X, V = _data(3)
    hv.hvp(net, X, V, batched=True)
    kernel = _kernel(net, X)
    assert isinstance(kernel, chain_numpy.NumpyRunner)
    assert kernel.threads == torch.get_num_threads()
    real, ran = chain_numpy.Plan._run, []
    monkeypatch.setattr(chain_numpy.Plan, "_run", lambda *a: ran.append(1) or real(*a))
    X2, V2 = X * 0.5, V.flip(0)
    torch.testing.assert_close(hv.hvp(net, X2, V2, batched=True), _reference(net, X2, V2))
    assert ran == [1]
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        torch.testing.assert_close(hv.hvp(net, X2, V2, batched=True), _reference(net, X2, V2))
    finally:
        torch.set_num_threads(threads)
    assert ran == [1]  # PyTorch's kernel served the call at the other thread count


_WINS_RACE = chain_numpy._wins_race  # the real race (tests/conftest.py turns it off)


class _Clock:
    """``time.perf_counter`` for :func:`chain_numpy._wins_race`: moves only when a raced call
    runs, by that call's set duration."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def call(self, seconds, calls):
        def run():
            calls.append(seconds)
            self.now += seconds

        return run


@pytest.mark.parametrize(
    ("numpy_s", "torch_s", "wins", "numpy_calls"),
    [
        (0.85e-3, 1e-3, True, 2),  # within the margin (0.9 of PyTorch's time)
        (0.95e-3, 1e-3, False, 2),  # faster, not by the margin
        (1e-3, 0.03, False, 0),  # PyTorch's call too long to race: numpy's never runs
        (2.5e-3, 1e-3, False, 1),  # numpy's first call took over twice as long: no second
    ],
)
def test_the_race_takes_best_times_and_the_margin(monkeypatch, numpy_s, torch_s, wins, numpy_calls):
    clock, calls = _Clock(), []
    monkeypatch.setattr(chain_numpy, "time", clock)
    numpy_call, torch_call = clock.call(numpy_s, calls), clock.call(torch_s, calls)
    assert _WINS_RACE(numpy_call, torch_call) is wins
    assert calls.count(numpy_s) == numpy_calls


def test_a_proved_numpy_kernel_gives_way_when_torch_becomes_faster(numpy_faster, monkeypatch):
    """E.g. after ``torch.set_num_threads(8)``; also how the GEMM-share benchmark records the
    products (:func:`hessviz._gemm.numpy_is_faster` patched to False)."""
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=1)
    X, V = _data(3)
    hv.hvp(net, X, V, batched=True)
    kernel = _kernel(net, X)
    assert isinstance(kernel, chain_numpy.NumpyRunner)
    monkeypatch.setattr(_gemm, "numpy_is_faster", lambda dtype, threads, layout, large=False: False)
    ran = []
    monkeypatch.setattr(chain_numpy.Plan, "_run", lambda *a: ran.append(1))
    torch.testing.assert_close(hv.hvp(net, X, V, batched=True), _reference(net, X, V))
    assert not ran


def test_a_numpy_kernel_that_disagrees_is_never_used(numpy_faster, monkeypatch):
    real = chain_numpy.Plan._run

    def off_by_a_little(self, *args):
        return real(self, *args) * (1 + 1e-9)  # round-off would be ~1e-16

    monkeypatch.setattr(chain_numpy.Plan, "_run", off_by_a_little)
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=1)
    X, V = _data(3)
    hv.hvp(net, X, V, batched=True)
    assert type(_kernel(net, X)) is ChainRunner
    torch.testing.assert_close(hv.hvp(net, X, V, batched=True), _reference(net, X, V))


def test_other_activations_and_layers_keep_the_pytorch_kernel(numpy_faster):
    for act in ("softplus", "gelu"):
        net = hv.mlp([3, 8, 8, 2], act, seed=1)
        X, V = _data(3)
        hv.hvp(net, X, V, batched=True)
        assert type(_kernel(net, X)) is ChainRunner, act


def test_weights_updated_replaced_or_retyped_are_read(numpy_faster):
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=3)
    X, V = _data(3)
    hv.hvp(net, X, V, batched=True)
    kernel = _kernel(net, X)
    assert isinstance(kernel, chain_numpy.NumpyRunner)
    with torch.no_grad():
        net[2].weight.mul_(1.5)  # an optimiser step: same tensor, new values
    torch.testing.assert_close(hv.hvp(net, X, V, batched=True), _reference(net, X, V))
    net[2].weight = nn.Parameter(net[2].weight.detach() * -1)  # a new tensor
    torch.testing.assert_close(hv.hvp(net, X, V, batched=True), _reference(net, X, V))
    with torch.no_grad():
        net[0].weight.data = net[0].weight.data.t().contiguous().t()  # same values, new strides
    torch.testing.assert_close(hv.hvp(net, X, V, batched=True), _reference(net, X, V))
    assert kernel.layers() is not None  # all still float64 CPU tensors: numpy's kernel runs
    net[2].weight.data = net[2].weight.data.float()  # a float32 weight: PyTorch's kernel
    assert kernel.layers() is None
    with pytest.raises(hv.HessvizError):  # and the full path explains the mixed dtypes
        hv.hvp(net, X, V, batched=True)


def test_concurrent_calls_each_get_their_own_buffers(numpy_faster, in_threads):
    net = hv.mlp([4, 32, 32, 3], "tanh", seed=5)
    X, V = _data(4, B=16)
    hv.hvp(net, X, V, batched=True)
    assert isinstance(_kernel(net, X), chain_numpy.NumpyRunner)
    inputs = [_data(4, B=16, seed=s) for s in range(8)]
    expected = [_reference(net, x, v) for x, v in inputs]
    got = in_threads(lambda x, v: hv.hvp(net, x, v, batched=True), inputs)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_the_plan_runs_the_same_numbers_as_the_pytorch_chain_kernel():
    """The kernel on its own, every layer count from one hidden layer up, against
    :func:`hessviz.structured.chain.hvp` (the PyTorch kernel it stands in for)."""
    from hessviz.structured import chain

    for sizes in ([2, 5, 1], [2, 5, 7, 3], [4, 6, 5, 7, 6, 2]):
        net = hv.mlp(sizes, "tanh", seed=len(sizes))
        X, V = _data(sizes[0], B=9)
        hv.hvp(net, X, V, batched=True)
        ch = _kernel(net, X).chain
        sel = tuple(range(sizes[-1]))
        with torch.no_grad():
            expected = chain.hvp(ch, X, V, sel)
        torch.testing.assert_close(chain_numpy.hvp(ch, X, V, sel), expected, rtol=1e-12, atol=1e-12)
