"""``torch.autograd.functional``: the Jacobian (vectorised) of each output's per-sample gradient."""

from __future__ import annotations

import torch
from torch.autograd.functional import jacobian
from torch.autograd.functional import vhp as _vhp

from .._problem import Problem


def hessian(p: Problem, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    B, n = X.shape
    H = X.new_zeros(B, len(sel), n, n)
    for a, i in enumerate(sel):

        def summed_gradient(Xg: torch.Tensor, i: int = i) -> torch.Tensor:
            y = p.batch_fn(Xg)[:, i].sum()
            if not y.requires_grad:
                return torch.zeros(n, dtype=Xg.dtype, device=Xg.device)
            (g,) = torch.autograd.grad(y, Xg, create_graph=True, allow_unused=True)
            return torch.zeros(n, dtype=Xg.dtype, device=Xg.device) if g is None else g.sum(0)

        # Row j of the Jacobian of Σ_b ∇_x y_i(x_b) holds every sample's row j: (n, B, n).
        J = jacobian(summed_gradient, X, vectorize=True, strict=False)
        H[:, a] = J.permute(1, 0, 2)
    return H


def diagonal(p: Problem, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    return torch.diagonal(hessian(p, X, sel), dim1=-2, dim2=-1)


def hvp(p: Problem, X: torch.Tensor, V: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    R = X.new_zeros(X.shape[0], len(sel), X.shape[1])
    for a, i in enumerate(sel):
        _, R[:, a] = _vhp(lambda Xg, i=i: p.batch_fn(Xg)[:, i].sum(), X, V, strict=False)
    return R
