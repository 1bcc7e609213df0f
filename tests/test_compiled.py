"""``hv.compile``: compiled layer-wise kernels that prove themselves, or plain calls."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

import hessviz as hv

D = torch.float64


@pytest.fixture(scope="module")
def compiled_mlp():
    net = hv.mlp([2, 16, 16, 3], "tanh", seed=0)
    X = torch.randn(8, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    return net, X, hv.compile(net, X, batched=True, ops=("laplacian", "hvp"))


def test_compiled_kernels_give_the_plain_numbers(compiled_mlp):
    net, X, c = compiled_mlp
    # "compiled" where torch.compile works here; else the reason, and plain calls
    assert set(c.kernels) == {"laplacian", "hvp"}
    for how in c.kernels.values():
        assert how == "compiled" or how.startswith("eager: "), how
    if shutil.which("g++") or shutil.which("c++"):  # torch.compile's CPU backend needs one
        assert c.kernels == {"laplacian": "compiled", "hvp": "compiled"}
    gen = torch.Generator().manual_seed(1)
    X2, V = torch.randn(8, 2, dtype=D, generator=gen), torch.randn(8, 2, dtype=D, generator=gen)
    torch.testing.assert_close(c.laplacian(X2), hv.laplacian(net, X2, batched=True, method="func"))
    torch.testing.assert_close(c.hvp(X2, V), hv.hvp(net, X2, V, batched=True, method="func"))
    # ops not compiled, and other shapes, take the plain path
    torch.testing.assert_close(c.hessian(X2), hv.hessian(net, X2, batched=True, method="func"))
    torch.testing.assert_close(
        c.laplacian(X2[:3]), hv.laplacian(net, X2[:3], batched=True, method="func")
    )


def test_a_changed_model_takes_the_plain_path(compiled_mlp):
    net, X, c = compiled_mlp
    old = net[1]
    try:
        net[1] = nn.Sigmoid()
        torch.testing.assert_close(
            c.laplacian(X), hv.laplacian(net, X, batched=True, method="func")
        )
    finally:
        net[1] = old
    torch.testing.assert_close(c.laplacian(X), hv.laplacian(net, X, batched=True, method="func"))


class Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.norm = nn.Linear(3, 4), nn.LayerNorm(4)

    def forward(self, x):
        return torch.tanh(self.norm(self.fc(x))).sum(-1)


def test_other_methods_stay_plain_and_bad_ops_are_refused():
    x = torch.randn(3, dtype=D)
    c = hv.compile(lambda x: x.sin().sum(), x, ops=("diagonal",))
    assert c.kernels == {"diagonal": "eager: graph"}
    torch.testing.assert_close(c.hessian_diagonal(x), -x.sin())
    model = Normed().to(D)  # the graph engine's (its plans are reused, not compiled)
    c = hv.compile(model, x, ops=("hessian",))
    assert c.kernels == {"hessian": "eager: graph"}
    torch.testing.assert_close(c.hessian(x), hv.hessian(model, x, method="func"))
    with pytest.raises(hv.HessvizError, match="ops must be"):
        hv.compile(lambda x: x.sin().sum(), x, ops="hessian")
    with pytest.raises(hv.HessvizError, match="ops must be"):
        hv.compile(lambda x: x.sin().sum(), x, ops=("jacobian",))
