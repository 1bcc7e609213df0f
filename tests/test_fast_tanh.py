"""numpy's ``tanh`` in the chain kernels (:func:`hessviz.ops.tanh_into`).

The fast path must agree with ``torch.tanh`` to a few units in the last place, prove itself
once per dtype before it is taken (a wrong, warning or sign-losing ``np.tanh`` keeps torch's),
and stay out of autograd, tracing, small tensors, other dtypes and many-thread runs. Kernel
results with it taken are checked against torch.func at sizes where it runs.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from cases import batched_call

import hessviz as hv
from hessviz import ops

BIG = 4 * ops._NUMPY_MIN_NUMEL


def _spy():
    """``np.tanh`` patched with a counting wrapper (what ``tanh_into`` calls)."""
    return mock.patch.object(ops.np, "tanh", wraps=np.tanh)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_tanh_agrees_with_torch_and_is_taken(dtype):
    assert ops.numpy_tanh_agrees(dtype)  # this machine's numpy passes the probe
    z = torch.cat([torch.randn(BIG, dtype=dtype) * 4, torch.tensor([0.0, -0.0, 30.0, -30.0])])
    z = z.to(dtype)
    out = torch.full_like(z, float("nan"))
    with _spy() as spy:
        got = ops.tanh_into(z, out)
    assert spy.call_count == 1 and got is out
    eps = torch.finfo(dtype).eps
    expected = torch.tanh(z)
    assert ((got - expected).abs() <= ops.TANH_ULPS * eps * expected.abs()).all()
    assert torch.equal(torch.signbit(got[-4:]), torch.signbit(expected[-4:]))


def test_a_strided_view_is_written_through():
    z = torch.randn(128, 64, dtype=torch.float64)
    out = torch.zeros(64, 128, dtype=torch.float64).T  # not contiguous
    with _spy() as spy:
        ops.tanh_into(z, out)
    assert spy.call_count == 1
    torch.testing.assert_close(out, torch.tanh(z), rtol=1e-15, atol=0)


@pytest.mark.parametrize("case", ["small", "float16", "requires_grad", "threads", "shape"])
def test_torch_tanh_where_numpy_is_not_safe_or_not_faster(case, monkeypatch):
    n, dtype = BIG, torch.float64
    if case == "small":
        n = ops._NUMPY_MIN_NUMEL - 1
    if case == "float16":
        dtype = torch.float16
    if case == "threads":
        n = ops._ONE_THREAD_NUMEL
        monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    z = torch.randn(n, dtype=dtype, requires_grad=case == "requires_grad")
    out = torch.empty(0 if case == "shape" else n, dtype=dtype)  # torch resizes an empty out
    with _spy() as spy, torch.no_grad():
        got = ops.tanh_into(z, out)
    assert spy.call_count == 0
    assert torch.equal(got, torch.tanh(z.detach()))


def _bad_tanh(kind):
    def tanh(x, *args, **kwargs):
        y = np.tanh(x, *args, **kwargs)
        if kind == "off":
            y = y * (1 + 1e-9)
        elif kind == "sign":
            y = np.where(y == 0, 0.0, y).astype(x.dtype)
        elif kind == "warning":
            np.log(np.array([-1.0]))  # RuntimeWarning: invalid value
        elif kind == "nan":
            y = np.nan_to_num(y)
        return y

    return tanh


@pytest.mark.parametrize("kind", ["off", "sign", "warning", "nan"])
def test_a_numpy_tanh_that_disagrees_is_not_trusted(kind):
    probe = ops.numpy_tanh_agrees.__wrapped__  # the uncached check
    assert probe(torch.float64)
    with mock.patch.object(ops.np, "tanh", _bad_tanh(kind)):
        assert not probe(torch.float64)


def test_a_failed_probe_keeps_torch_tanh(monkeypatch):
    monkeypatch.setattr(ops, "numpy_tanh_agrees", lambda dtype: False)
    z = torch.randn(BIG, dtype=torch.float64)
    with _spy() as spy:
        got = ops.tanh_into(z, torch.empty_like(z))
    assert spy.call_count == 0 and torch.equal(got, torch.tanh(z))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["hessian", "diagonal", "laplacian", "hvp"])
def test_chain_kernels_with_numpy_tanh_equal_torch_func(op, dtype, plain_hvp_on_torch):
    """Width 64, batch 64: every activation is 4096 elements, so numpy's tanh runs (in the
    PyTorch chain kernels; the numpy HVP kernel's first-call proof would call it twice more)."""
    net = hv.mlp([3, 64, 64, 2], activation="tanh", seed=1, dtype=dtype).requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, 3, dtype=dtype, generator=gen)
    V = torch.randn(64, 3, dtype=dtype, generator=gen)
    call = batched_call(op, net, X, V)
    with _spy() as spy:
        got = call()
    assert spy.call_count == 2  # one per hidden layer
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(got, call(method="func"), **tol)
