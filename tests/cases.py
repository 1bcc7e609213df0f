"""Test problems as data: each case builds ``(f, x, batched)`` and may carry a closed form.

Ids are readable (``mlp-tanh-batched``) so a failure names the problem. ``reference`` is the one
trusted float64 answer every method is compared with: ``torch.func.hessian`` applied per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import hessviz as hv

F64 = torch.float64


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], tuple]  # () -> (f, x, batched)
    closed_form: Callable | None = None  # x -> Hessian (S_out + S_in + S_in)
    structured: bool = False  # the layer-wise engine applies


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=_gen(seed), dtype=F64)


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def rosenbrock_hessian(x: torch.Tensor) -> torch.Tensor:
    n = x.numel()
    H = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n - 1):
        H[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        H[i + 1, i + 1] += 200
        H[i, i + 1] += -400 * x[i]
        H[i + 1, i] += -400 * x[i]
    return H


_A = _randn(5, 5, seed=3)


def _quadratic():
    return (lambda x: x @ _A @ x), _randn(5, seed=4), False


def flux_chain() -> nn.Sequential:
    """The Flux thread's ``Chain(Dense(5, 3, elu), Dense(3, 3))``."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 3), nn.ELU(), nn.Linear(3, 3)).double()


def mnist_cnn(activation: type[nn.Module] = nn.Softplus) -> nn.Sequential:
    """An MNIST-shaped CNN (1×28×28 → 10 class scores) with smooth activations."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return (
            nn.Sequential(
                nn.Conv2d(1, 4, 5, stride=2),  # 4×12×12
                activation(),
                nn.AvgPool2d(2),  # 4×6×6
                nn.Conv2d(4, 8, 3),  # 8×4×4
                nn.BatchNorm2d(8),
                activation(),
                nn.Flatten(),
                nn.Linear(128, 32),
                activation(),
                nn.Linear(32, 10),
            )
            .double()
            .eval()
        )


def _mlp_case(act: str, batched: bool, sizes=(3, 6, 5, 2)) -> Case:
    def build():
        x = _randn(4, sizes[0], seed=1) if batched else _randn(sizes[0], seed=1)
        return hv.mlp(list(sizes), act, seed=7), x, batched

    return Case(f"mlp-{act}-{'batched' if batched else 'single'}", build, structured=True)


def _conv1d():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1), nn.GELU(), nn.AvgPool1d(2), nn.Flatten(), nn.Linear(9, 2),
        nn.Sigmoid(),
    ).double()  # fmt: skip
    return net.eval(), _randn(3, 2, 6, seed=2), True


def _leaky_mish():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 5), nn.Mish(), nn.Linear(5, 5), nn.LeakyReLU(0.1),
                        nn.Linear(5, 3)).double()  # fmt: skip
    return net, _randn(2, 4, seed=5), True


def _wide_stem():
    return hv.mlp([12, 3, 4, 2], "silu", seed=3), _randn(3, 12, seed=6), True


def _stacked_activations():
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Linear(3, 4), nn.Tanh(), nn.Sigmoid(), nn.Identity(), nn.Linear(4, 4), nn.Dropout(0.3),
        nn.Softplus(), nn.Linear(4, 2), nn.ELU(),
    ).double()  # fmt: skip
    return net.eval(), _randn(3, 3, seed=12), True


def _activation_only():
    return nn.Sequential(nn.Tanh(), nn.Softplus()).double(), _randn(2, 4, seed=13), True


def _nll_mlp():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4), nn.LogSoftmax(dim=-1)).double()
    target = torch.tensor([2])
    return (lambda x: nn.functional.nll_loss(net(x), target)), _randn(1, 5, seed=7), False


def _multi_dim():
    W = _randn(2, 3, 4, seed=8)
    return (
        (lambda x: torch.tanh(torch.einsum("ijk,k->ij", W, x.reshape(4)) ** 2)),
        _randn(2, 2, seed=9),
        False,
    )


def _scalar_input():
    return (lambda x: x**3 + torch.sin(x)), torch.tensor(0.7, dtype=F64), False


CASES: list[Case] = [
    Case(
        "sin-sum",
        lambda: ((lambda x: torch.sin(x).sum()), _randn(4, seed=0), False),
        closed_form=lambda x: torch.diag(-torch.sin(x)),
    ),
    Case(
        "x2-arange",
        lambda: (
            (lambda x: x * x * torch.arange(4, dtype=x.dtype)),
            torch.full((4,), 2.0, dtype=F64),
            False,
        ),
        closed_form=lambda x: torch.diag_embed(torch.diag(2 * torch.arange(4, dtype=x.dtype))),
    ),  # fmt: skip
    Case("quadratic", _quadratic, closed_form=lambda x: _A + _A.T),
    Case(
        "rosenbrock",
        lambda: (rosenbrock, _randn(5, seed=10), False),
        closed_form=rosenbrock_hessian,
    ),
    Case("scalar-input", _scalar_input, closed_form=lambda x: 6 * x - torch.sin(x)),
    Case("multi-dim-output", _multi_dim),
    Case("flux-elu-chain", lambda: (flux_chain(), _randn(5, seed=11), False), structured=True),
    Case(
        "linear-4-1",
        lambda: (nn.Linear(4, 1).double(), torch.ones(4, dtype=F64), False),
        closed_form=lambda x: torch.zeros(1, 4, 4, dtype=F64),
        structured=True,  # a lone affine layer: no activation, exact zeros
    ),
    Case("nll-logsoftmax-mlp", _nll_mlp),
    Case("conv1d-gelu-batched", _conv1d, structured=True),
    Case("mish-leaky-batched", _leaky_mish, structured=True),
    Case("wide-stem-silu-batched", _wide_stem, structured=True),
    Case("stacked-activations-identity-dropout", _stacked_activations, structured=True),
    Case("activation-only", _activation_only, structured=True),
    *[_mlp_case(act, batched) for act in hv.ACTIVATIONS for batched in (False, True)],
]
CASE_IDS = [c.id for c in CASES]


def reference_hessian(f, x: torch.Tensor, batched: bool) -> torch.Tensor:
    """The trusted float64 answer: ``torch.func.hessian`` of ``f``, per sample when batched."""
    if not batched:
        return torch.func.hessian(f)(x)
    return torch.stack([torch.func.hessian(lambda s: f(s[None])[0])(xb) for xb in x])


def batched_call(op: str, model, X: torch.Tensor, V: torch.Tensor, **fixed) -> Callable:
    """``**kw ↦`` the public call of ``op`` (``hessian``, ``diagonal``, ``laplacian``, ``hvp``)
    on the batch ``X`` (``V``: the HVP's directions), with ``fixed`` and ``kw`` as keywords
    (e.g. ``outputs=`` fixed, ``method="func"`` for the reference)."""
    calls = {
        "hessian": lambda **kw: hv.hessian(model, X, **kw),
        "diagonal": lambda **kw: hv.hessian_diagonal(model, X, **kw),
        "laplacian": lambda **kw: hv.laplacian(model, X, **kw),
        "hvp": lambda **kw: hv.hvp(model, X, V, **kw),
    }
    return lambda **kw: calls[op](batched=True, **fixed, **kw)
