"""Factored Jacobians (:class:`hessviz.structured.jacobian.Jacobian` with ``factors``).

The Laplacian keeps a first hidden layer's per-sample Jacobian ``diag(σ') Wᵀ`` as its two
factors and reads only its squared column norms (with or without the stem's Gram ``PᵀP``);
any other reader forms the rows. Each path must equal the formed Jacobian's answer and a
closed form, and the Laplacians of models where a factored Jacobian meets another layer (a
deeper chain, two activations in a row, a Linear after a Linear) must equal torch.func's.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import hessviz as hv
from hessviz._memory import Workspace
from hessviz.structured.jacobian import Jacobian

D = torch.float64


def _factors(B, K_in, K, seed):
    gen = torch.Generator().manual_seed(seed)
    s = torch.rand(B, K_in, dtype=D, generator=gen) - 0.3  # signs of both kinds, some near 0
    W = torch.randn(K, K_in, dtype=D, generator=gen)
    return s, W


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 4),
    K_in=st.integers(1, 9),
    K=st.integers(1, 9),
    r=st.integers(1, 12),
    stem=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_factored_column_norms_equal_the_formed_ones_and_the_closed_form(B, K_in, K, r, stem, seed):
    s, W = _factors(B, K_in, K, seed)
    P = torch.randn(r, K_in, dtype=D, generator=torch.Generator().manual_seed(seed + 1))
    M = P.T @ P if stem else None
    rows = s[:, :, None] * W.T[None]  # diag(s) Wᵀ per sample: (B, K_in, K)
    factored = Jacobian(factors=(s, W))
    torch.testing.assert_close(factored.rows, rows, rtol=0, atol=0)
    assert not factored.identity and not factored.shared
    like = torch.empty(B, 1, K, dtype=D)
    got = factored.squared_column_norms(M, K, like, Workspace(keep=True))
    formed = Jacobian(rows.clone()).squared_column_norms(M, K, like)
    closed = ((P if stem else torch.eye(K_in, dtype=D)) @ rows).square().sum(-2)  # Σ_j (P J)_jk²
    assert got.shape == (B, K)
    torch.testing.assert_close(got, formed, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, closed, rtol=1e-12, atol=1e-12)


def _deep():  # a narrowing stem and two hidden layers after it: the factored one is formed
    return nn.Sequential(
        nn.Linear(20, 6), nn.Tanh(), nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 4), nn.Tanh(),
        nn.Linear(4, 3),
    )  # fmt: skip


def _twice():  # two activations in a row after the factored layer
    return nn.Sequential(
        nn.Linear(20, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Softplus(), nn.Linear(5, 2)
    )


def _linear_linear():  # a Linear straight after the factored one
    return nn.Sequential(
        nn.Linear(20, 6), nn.Tanh(), nn.Linear(6, 5), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)
    )


def _one_hidden():  # the factored Jacobian is the last one: only its column norms are read
    return nn.Sequential(nn.Linear(20, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


class _Residual(nn.Module):  # a hand-written forward (the graph engine) around the same layers
    def __init__(self):
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(20, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(torch.tanh(self.mid(h)) + h)


def _general_kernels_only(monkeypatch) -> None:
    """No chain kernel for any model: the MLPs here (a narrowing first layer, Laplacians) run the
    general kernels, with their factored Jacobians, as every model that is not a chain does."""
    from hessviz.structured import kernels

    monkeypatch.setattr(kernels, "_chain", lambda *args: None)


@pytest.mark.parametrize("make", [_deep, _twice, _linear_linear, _one_hidden, _Residual])
@pytest.mark.parametrize("calls", [1, 3])
@pytest.mark.parametrize("route", ["auto", "general"])
def test_laplacians_through_factored_jacobians_equal_torch_func(make, calls, route, monkeypatch):
    if route == "general":
        _general_kernels_only(monkeypatch)
    torch.manual_seed(0)
    net = make().to(D)
    X = torch.randn(5, 20, dtype=D)
    for _ in range(calls):  # repeated calls run the kept plan and its workspace
        got = hv.laplacian(net, X, batched=True)
    torch.testing.assert_close(got, hv.laplacian(net, X, batched=True, method="func"))


def _activation_first():  # no stem: Jacobians in x, the factored one's norms without a Gram
    return nn.Sequential(nn.Tanh(), nn.Linear(20, 6), nn.Tanh(), nn.Linear(6, 2))


@pytest.mark.parametrize(
    ("make", "formed"), [(_one_hidden, 0), (_activation_first, 0), (_deep, 1), (_twice, 0)]
)
def test_the_laplacian_forms_a_factored_jacobian_only_for_a_next_layer(make, formed, monkeypatch):
    """The Laplacian's first per-sample Jacobian stays factored unless another affine layer
    carries it on (``_twice``: its second activation forms the rows itself, not through
    the kernels' ``scaled_weight``); the hessian forms it at once."""
    from hessviz.structured import kernels

    _general_kernels_only(monkeypatch)
    torch.manual_seed(1)
    net = make().to(D)
    X = torch.randn(3, 20, dtype=D)
    calls = []
    real = kernels.scaled_weight
    monkeypatch.setattr(kernels, "scaled_weight", lambda *a: calls.append(a) or real(*a))
    hv.laplacian(net, X, batched=True, method="structured")  # checked once on one sample
    calls.clear()
    got = hv.laplacian(net, X, batched=True, method="structured")  # the plan's kernel alone
    assert len(calls) == formed
    torch.testing.assert_close(got, hv.laplacian(net, X, batched=True, method="func"))
    calls.clear()
    hv.hessian(net, X, batched=True, method="structured")
    assert len(calls) >= 1
