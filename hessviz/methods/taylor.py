"""Forward-over-forward (``jvp∘jvp``) along each basis vector: the exact diagonal, Taylor style.

``∂²y/∂x_j² = d²/dh² y(x + h e_j)`` at ``h = 0``: two nested forward passes per input coordinate,
vmapped over the coordinates and the batch — no reverse pass, no full Hessian.
"""

from __future__ import annotations

import torch
from torch.func import jvp, vmap

from .._problem import Problem
from .func import _selected


def diagonal(p: Problem, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    h = _selected(p, sel)

    def second_directional(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return jvp(lambda y: jvp(h, (y,), (e,))[1], (x,), (e,))[1]  # (m,)

    E = torch.eye(X.shape[1], dtype=X.dtype, device=X.device)
    D = vmap(vmap(second_directional, in_dims=(None, 0)), in_dims=(0, None))(X, E)  # (B, n, m)
    return D.transpose(1, 2)
