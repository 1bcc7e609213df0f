"""The chain HVP with its elementwise work fused by numba (:mod:`hessviz.structured.chain_numba`),
one of :func:`hessviz.compile`'s candidates for HVPs of tanh/sigmoid/sin MLPs on the CPU.

Every case compares against the PyTorch chain kernel it stands in for and against
``method="func"`` (torch.func, float64), and checks that what the loops assume (shapes, dtypes,
finite inputs) is checked before they run: an unchecked loop reads out of bounds silently.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import hessviz as hv
from hessviz import _hot, compiled
from hessviz.structured import chain, chain_numpy

chain_numba = pytest.importorskip("hessviz.structured.chain_numba")  # the 'fast' extra

D = torch.float64


@pytest.fixture(autouse=True)
def numba_wins_the_race(monkeypatch):
    """No timing in unit tests: the numba kernel is reported faster than the plain one, and
    the numpy kernel (first in the round, which wins ties) is not built."""
    monkeypatch.setattr(compiled, "_race", lambda fast, plain, args: (0.0, 1.0))

    def no_numpy_kernel(*args):
        raise TypeError("numpy kernel: left out by this test")

    monkeypatch.setattr(compiled, "_in_numpy", no_numpy_kernel)


def _data(n: int, B: int = 6, dtype=D, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, n, dtype=dtype, generator=gen) for _ in range(2))


def _reference(net, X, V, outputs=None):
    return hv.hvp(net, X, V, batched=True, outputs=outputs, method="func")


def _chain(net, X, V, outputs=None):
    hv.hvp(net, X, V, batched=True, outputs=outputs)
    entry = _hot.find(net, _hot.request_key("hvp", "auto", X, True, outputs))
    return entry.kernel.chain


def _net(sizes, act, dtype=D, seed=0, bias=True):
    """An MLP whose hidden widths differ from layer to layer, with or without biases, scaled
    past the near-linear regime."""
    net = hv.mlp(sizes, act, seed=seed, dtype=dtype)
    with torch.no_grad():
        for lin in net[::2]:
            lin.weight.mul_(1.5)
            if not bias:
                lin.bias = None
    return net


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "sin"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "sizes", [[3, 8, 2], [2, 5, 7, 3], [4, 6, 5, 7, 6, 2]], ids=["L1", "L2", "L4"]
)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_the_fused_plan_equals_the_pytorch_chain_kernel_and_torch_func(act, dtype, sizes, bias):
    net = _net(sizes, act, dtype, seed=len(sizes), bias=bias)
    X, V = _data(sizes[0], B=9, dtype=dtype, seed=1)
    ch = _chain(net, X, V)
    for sel in (tuple(range(sizes[-1])), (sizes[-1] - 1, 0)[: sizes[-1]]):
        plan = chain_numba.FusedPlan(ch, 9, dtype, sel)
        got = plan(X, V, layers=chain_numpy.arrays(ch))
        with torch.no_grad():
            expected = chain.hvp(ch, X, V, sel)
        assert got.shape == (9, len(sel), sizes[0]) and got.dtype == dtype
        tight = (
            {"rtol": 1e-5, "atol": 1e-6}
            if dtype == torch.float32
            else {"rtol": 1e-12, "atol": 1e-12}
        )
        torch.testing.assert_close(got, expected, **tight)
    # and against torch.func in float64, all outputs
    net64 = net.to(D)
    got = chain_numba.FusedPlan(ch, 9, D, tuple(range(sizes[-1])))(X.to(D), V.to(D))
    torch.testing.assert_close(got, _reference(net64, X.to(D), V.to(D)))


def test_closed_forms_hold_at_known_points():
    """tanh: σ'(0) = 1, σ''(0) = 0; a one-unit tanh layer y = tanh(w x): H = -2 w² tanh(wx)
    (1 - tanh²(wx)). The fused loops against the closed form, not only against other kernels."""
    w = 0.7
    net = nn.Sequential(
        nn.Linear(1, 1, bias=False, dtype=D), nn.Tanh(), nn.Linear(1, 1, bias=False, dtype=D)
    )
    with torch.no_grad():
        net[0].weight.fill_(w)
        net[2].weight.fill_(1.0)
    X = torch.tensor([[-1.3], [0.0], [0.4], [2.0]], dtype=D)
    V = torch.tensor([[1.0], [2.0], [-0.5], [3.0]], dtype=D)
    ch = _chain(net, X, V)
    got = chain_numba.FusedPlan(ch, 4, D, (0,))(X, V)
    a = torch.tanh(w * X)
    torch.testing.assert_close(got[:, 0], -2 * w**2 * a * (1 - a**2) * V, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("where", ["x nan", "x inf", "v -inf"])
def test_a_non_finite_input_is_refused_before_any_product(where):
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=1)
    X, V = _data(3)
    ch = _chain(net, X, V)
    plan = chain_numba.FusedPlan(ch, 6, D, (0, 1))
    bad = {"x nan": float("nan"), "x inf": float("inf"), "v -inf": float("-inf")}[where]
    X2, V2 = X.clone(), V.clone()
    (V2 if where.startswith("v") else X2)[4, 1] = bad
    assert plan(X2, V2, layers=chain_numpy.arrays(ch)) is None
    c = hv.compile(net, X, batched=True, ops=("hvp",), ahead_of_time=False)
    assert c.kernels == {"hvp": compiled.IN_NUMBA}
    with pytest.raises(hv.HessvizError, match="finite|NaN|inf"):  # the plain path explains
        c.hvp(X2, V2)


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "sin"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compile_runs_the_numba_kernel_with_the_plain_numbers(act, dtype):
    net = hv.mlp([3, 16, 16, 3], act, seed=4, dtype=dtype)
    X, V = _data(3, dtype=dtype, seed=8)
    c = hv.compile(net, X, batched=True, outputs=[2, 0], ops=("hvp",), ahead_of_time=False)
    assert c.kernels == {"hvp": compiled.IN_NUMBA}
    X2, V2 = X.flip(0), V * 3  # other points than the example
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
    expected = hv.hvp(net, X2, V2, batched=True, outputs=[2, 0], method="func")
    torch.testing.assert_close(c.hvp(X2, V2), expected, **tol)
    torch.testing.assert_close(c.hvp(X2[1:], V2[1:]), expected[1:], **tol)  # another B: plain


def test_weights_updated_replaced_resized_or_retyped_are_read_or_refused():
    """What the loops index by is checked at every call: a hidden layer resized from 8 to 9
    units (same modules, a valid model) must not be read through the 8-unit plan."""
    net = hv.mlp([2, 8, 8, 2], "tanh", seed=6)
    X, V = _data(2, B=5, seed=9)
    c = hv.compile(net, X, batched=True, ops=("hvp",), ahead_of_time=False)
    assert c.kernels == {"hvp": compiled.IN_NUMBA}
    first = c.hvp(X, V)
    with torch.no_grad():
        net[2].weight.mul_(1.5)  # an optimiser step: same tensor, new values
    assert not torch.equal(c.hvp(X, V), first)
    torch.testing.assert_close(c.hvp(X, V), _reference(net, X, V))
    net[2].weight = nn.Parameter(net[2].weight.detach() * -1)  # a new tensor, same layout
    torch.testing.assert_close(c.hvp(X, V), _reference(net, X, V))
    gen = torch.Generator().manual_seed(3)
    net[2].weight = nn.Parameter(torch.randn(9, 8, dtype=D, generator=gen))  # width 8 → 9
    net[2].bias = nn.Parameter(torch.randn(9, dtype=D, generator=gen))
    net[4].weight = nn.Parameter(torch.randn(2, 9, dtype=D, generator=gen))
    torch.testing.assert_close(c.hvp(X, V), _reference(net, X, V))
    kernel = c._entries["hvp"][1]  # the loops themselves never see the resized weights
    with pytest.raises(TypeError, match="planned shape"):
        kernel.run_library([X, V])
    net[0].weight.data = net[0].weight.data.float()  # a float32 weight: the plain path explains
    with pytest.raises(hv.HessvizError):
        c.hvp(X, V)


def test_weights_laid_out_otherwise_take_the_plain_path_without_compiling():
    """A weight with other strides (same values) is refused before any loop runs: numba would
    compile the loops anew for that layout at every call."""
    net = hv.mlp([3, 8, 8, 2], "tanh", seed=2)
    X, V = _data(3, B=5, seed=4)
    c = hv.compile(net, X, batched=True, ops=("hvp",), ahead_of_time=False)
    assert c.kernels == {"hvp": compiled.IN_NUMBA}
    compiled_before = [len(fn.signatures) for fn in (chain_numba._first, chain_numba._forward)]
    with torch.no_grad():
        net[2].weight.data = net[2].weight.data.t().contiguous().t()  # column-major
    torch.testing.assert_close(c.hvp(X, V), _reference(net, X, V))
    with pytest.raises(TypeError, match="not contiguous"):
        c._entries["hvp"][1].run_library([X, V])
    after = [len(fn.signatures) for fn in (chain_numba._first, chain_numba._forward)]
    assert after == compiled_before


def test_concurrent_calls_each_get_their_own_buffers(in_threads):
    net = hv.mlp([4, 32, 32, 3], "tanh", seed=5)
    X, V = _data(4, B=16)
    c = hv.compile(net, X, batched=True, ops=("hvp",), ahead_of_time=False)
    assert c.kernels == {"hvp": compiled.IN_NUMBA}
    inputs = [_data(4, B=16, seed=s) for s in range(8)]
    expected = [_reference(net, x, v) for x, v in inputs]
    got = in_threads(c.hvp, inputs)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_without_numba_the_candidate_says_how_to_get_it(monkeypatch):
    net = hv.mlp([2, 8, 1], "tanh", seed=7)
    X, V = _data(2, B=4)
    hv.hvp(net, X, V, batched=True)
    entry = _hot.find(net, _hot.request_key("hvp", "auto", X, True, None))
    monkeypatch.setitem(sys.modules, "hessviz.structured.chain_numba", None)  # import fails
    monkeypatch.delattr(hv.structured, "chain_numba")  # as before its first import
    with pytest.raises(TypeError, match=r"numba kernel: .*pip install 'hessviz\[fast\]'"):
        compiled._in_numba(entry, "hvp", X, V)
    c = hv.compile(net, X, batched=True, ops=("hvp",), ahead_of_time=False)
    assert c.kernels["hvp"] != compiled.IN_NUMBA
    torch.testing.assert_close(c.hvp(X, V), _reference(net, X, V))


def test_other_activations_are_not_fused():
    net = hv.mlp([2, 8, 8, 1], "softplus", seed=7)
    assert not chain_numba.supports(_chain(net, *_data(2)))
    assert chain_numba.supports(_chain(hv.mlp([2, 8, 8, 1], "sin", seed=7), *_data(2)))
