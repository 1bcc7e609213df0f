"""Repeated calls served by a numpy plan's own lane (``NumpyRunner.repeat``).

From the second call on, a plain Hessian, diagonal, Laplacian or HVP whose first call proved a
numpy plan (:mod:`hessviz.structured.chain_numpy`) is served by the runner's ``repeat``: it
proves ``x`` (and ``v``) finite on the numpy views the plan reads, re-checks the weights only
for what may have changed (the same memory, sizes, strides and dtype), and never switches
autograd's mode. Every case forces the plans' speed verdicts, so nothing here depends on this
machine's timings; each compares with a double-backward reference of the model as it is now.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

import hessviz as hv
from hessviz import _gemm, _hot
from hessviz.structured import chain_numpy
from hessviz.structured.layers import global_forward_hooks

D = torch.float64
PUBLIC = {
    "hessian": hv.hessian,
    "diagonal": hv.hessian_diagonal,
    "laplacian": hv.laplacian,
    "hvp": hv.hvp,
}


@pytest.fixture
def numpy_wins(monkeypatch):
    """Every numpy plan wins its race and numpy's BLAS is the faster one (HVPs)."""
    monkeypatch.setattr(chain_numpy, "_wins_race", lambda numpy_call, torch_call: True)
    monkeypatch.setattr(_gemm, "numpy_is_faster", lambda dtype, threads, layout, large=False: True)


@pytest.fixture(params=list(PUBLIC))
def op(request):
    return request.param


@pytest.fixture
def lane(monkeypatch):
    """What ``NumpyRunner.repeat`` returned at each call: "plan" (it ran the plan), None
    (inputs not finite) or NotImplemented (it did not take the call)."""
    seen = []
    real = chain_numpy.NumpyRunner.repeat

    def spy(self, *args):
        out = real(self, *args)
        seen.append("plan" if isinstance(out, torch.Tensor) else out)
        return out

    monkeypatch.setattr(chain_numpy.NumpyRunner, "repeat", spy)
    return seen


def _call(op, f, X, V=None, **kw):
    if op == "hvp":
        return hv.hvp(f, X, V, batched=True, **kw)
    return PUBLIC[op](f, X, batched=True, **kw)


def _reference(op, f, X, V=None):
    return _call(op, f, X, V, method="func")


def _data(n: int, B: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, n, dtype=D, generator=gen), torch.randn(B, n, dtype=D, generator=gen)


def _proved(op, net, X, V):
    """The first call, which must leave an entry whose kernel is a numpy plan with a lane."""
    _call(op, net, X, V)
    entry = _hot.find(net, _hot.request_key(op, "auto", X, True, None))
    assert isinstance(entry.kernel, chain_numpy.NumpyRunner)
    assert entry.lane is not None
    return entry


@pytest.mark.parametrize("grad", ["enable_grad", "no_grad"])
def test_the_lane_serves_repeated_calls_exactly_in_either_autograd_mode(numpy_wins, lane, op, grad):
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=1)
    X, V = _data(3)
    _proved(op, net, X, V)
    X2, V2 = X.flip(0) * 1.5, V * -2  # other points than the proof's
    expected = _reference(op, net, X2, V2)
    lane.clear()
    with getattr(torch, grad)():
        before = torch.is_grad_enabled()
        got = _call(op, net, X2, V2)
        assert torch.is_grad_enabled() == before
    assert lane == ["plan"]
    assert not got.requires_grad and got.grad_fn is None
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # an input that requires grad is read through a detached view: no history, same numbers
    lane.clear()
    got = _call(op, net, X2.clone().requires_grad_(), V2)
    assert lane == ["plan"] and got.grad_fn is None
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op, where", [*((op, "x") for op in PUBLIC), ("hvp", "v")])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_input_is_refused_by_the_lane_and_explained(
    numpy_wins, lane, op, where, value
):
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=1)
    X, V = _data(3)
    _proved(op, net, X, V)
    X, V = X.clone(), V.clone()
    X[4, 1] = V[4, 1] = 0.0  # the bad entry faces a zero of the other factor (inf · 0)
    (X if where == "x" else V)[4, 1] = value
    lane.clear()
    with pytest.raises(hv.HessvizError, match="NaN|inf"):
        _call(op, net, X, V)
    assert lane[0] is None  # the lane refused, the full path explained


def test_inputs_the_lane_does_not_take_run_the_pytorch_kernel(numpy_wins, lane, op, monkeypatch):
    """A non-contiguous input, a tensor subclass, another thread count than the race's: the
    lane hands the call back (NotImplemented) and the result is still exact."""

    class Tagged(torch.Tensor):
        pass

    net = hv.mlp([3, 8, 8, 2], "tanh", seed=2)
    X, V = _data(3)
    _proved(op, net, X, V)
    strided = X.t().contiguous().t()
    for x in (strided, X.as_subclass(Tagged)):
        lane.clear()
        got = _call(op, net, x, V).as_subclass(torch.Tensor)
        assert lane == [NotImplemented]
        torch.testing.assert_close(got, _reference(op, net, X, V))
    threads = torch.get_num_threads()
    monkeypatch.setattr(_gemm, "numpy_is_faster", lambda *a, **k: False)  # HVPs: BLAS verdict
    torch.set_num_threads(threads + 1)
    try:
        lane.clear()
        torch.testing.assert_close(_call(op, net, X, V), _reference(op, net, X, V))
        assert lane == [NotImplemented]
    finally:
        torch.set_num_threads(threads)


def test_weights_re_laid_on_the_same_memory_are_noticed(numpy_wins, lane, op):
    """Changes that keep each weight's address — a transposed view assigned to ``.data``, a
    hidden unit pruned by slicing ``.data`` — make another model: the lane's views of the old
    layout must not be used (one more kind of change than ``test_numpy_plans`` covers)."""
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=3)
    X, V = _data(3)
    _proved(op, net, X, V)
    w = net[2].weight
    ptr = w.data_ptr()
    w.data = w.data.t()  # 8 × 8: the same shape and address, the strides swapped
    assert w.data_ptr() == ptr and not w.is_contiguous()
    torch.testing.assert_close(_call(op, net, X, V), _reference(op, net, X, V))
    w.data = w.data.t()  # back to the proof's layout: the lane again
    lane.clear()
    torch.testing.assert_close(_call(op, net, X, V), _reference(op, net, X, V))
    assert lane == ["plan"]
    # prune hidden unit 7 of the second layer: its rows, its bias, the next layer's column
    a, b, c = net[2].weight, net[2].bias, net[4].weight
    ptrs = (a.data_ptr(), b.data_ptr(), c.data_ptr())
    a.data, b.data, c.data = a.data[:7], b.data[:7], c.data[:, :7]
    assert (a.data_ptr(), b.data_ptr(), c.data_ptr()) == ptrs
    torch.testing.assert_close(_call(op, net, X, V), _reference(op, net, X, V))


def test_a_weight_viewed_as_another_dtype_is_not_read_as_the_old_one(numpy_wins, op):
    """The same memory, sizes and strides as int64 (a frozen weight: torch refuses integer
    data for one that requires grad): the model no longer runs, so neither may the plan (the
    full path's error, as on a fresh call)."""
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=4)
    X, V = _data(3)
    net[2].weight.requires_grad_(False)
    _proved(op, net, X, V)
    net[2].weight.data = net[2].weight.data.view(torch.int64)
    with pytest.raises(RuntimeError):
        net(X)
    with pytest.raises(hv.HessvizError):
        _call(op, net, X, V)


@pytest.mark.parametrize("numpy", [True, False], ids=["numpy-plan", "pytorch-kernel"])
@pytest.mark.parametrize("pre", [False, True], ids=["hook", "pre-hook"])
def test_a_global_forward_hook_registered_later_is_honoured(op, numpy, pre, monkeypatch):
    """A hook for every module (``register_module_forward_hook``), registered after the plan
    was made, changes what ``f`` computes: repeated calls must give the new ``f``'s numbers."""
    if numpy:
        monkeypatch.setattr(chain_numpy, "_wins_race", lambda numpy_call, torch_call: True)
        monkeypatch.setattr(_gemm, "numpy_is_faster", lambda *a, **k: True)
    else:
        monkeypatch.setattr(chain_numpy, "_wins_race", lambda numpy_call, torch_call: False)
        monkeypatch.setattr(_gemm, "numpy_is_faster", lambda *a, **k: False)
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=5)
    X, V = _data(3)
    _call(op, net, X, V)
    entry = _hot.find(net, _hot.request_key(op, "auto", X, True, None))
    assert isinstance(entry.kernel, chain_numpy.NumpyRunner) == numpy
    before = _reference(op, net, X, V)
    if pre:  # square every Tanh's input
        handle = register_module_forward_pre_hook(
            lambda m, args: (args[0] ** 2,) if isinstance(m, nn.Tanh) else None
        )
    else:  # scale every Tanh's output by 3
        handle = register_module_forward_hook(
            lambda m, args, out: 3 * out if isinstance(m, nn.Tanh) else None
        )
    try:
        assert global_forward_hooks()
        expected = _reference(op, net, X, V)
        assert not torch.allclose(expected, before)  # the hook changes the numbers
        torch.testing.assert_close(_call(op, net, X, V), expected)
        torch.testing.assert_close(_call(op, net, X, V), expected)  # and the call after
    finally:
        handle.remove()
    assert not global_forward_hooks()
    torch.testing.assert_close(_call(op, net, X, V), _reference(op, net, X, V))


def test_global_forward_hooks_reads_what_torchs_public_registration_fills():
    """``global_forward_hooks`` reads torch's own dicts of global hooks (no public function
    reads them): this fails if torch keeps them elsewhere."""
    assert not global_forward_hooks()
    for register in (register_module_forward_hook, register_module_forward_pre_hook):
        handle = register(lambda *args: None)
        try:
            assert global_forward_hooks()
        finally:
            handle.remove()
        assert not global_forward_hooks()
