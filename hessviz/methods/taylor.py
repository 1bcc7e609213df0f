"""Forward-over-forward (``jvp∘jvp``) along each basis vector: the exact diagonal, Taylor style.

``∂²y/∂x_j² = d²/dh² y(x + h e_j)`` at ``h = 0``: two nested forward passes per input coordinate,
vmapped over the coordinates and the batch — no reverse pass, no full Hessian.
"""

from __future__ import annotations

import torch
from torch.func import jvp, vmap

from .._budget import get_memory_budget
from .._problem import Problem
from .func import _selected


def diagonal(p: Problem, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    h = _selected(p, sel)

    def second_directional(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return jvp(lambda y: jvp(h, (y,), (e,))[1], (x,), (e,))[1]  # (m,)

    B, n = X.shape
    # Each basis direction carries tangents the size of f's intermediates (≈ a few (n + M)):
    # take as many directions at once as fit the memory budget.
    per_direction = 8 * B * (n + p.M) * X.element_size()
    chunk = max(1, min(n, get_memory_budget() // per_direction))
    batched = vmap(vmap(second_directional, in_dims=(None, 0)), in_dims=(0, None))
    E = torch.eye(n, dtype=X.dtype, device=X.device)
    D = torch.cat([batched(X, E[j : j + chunk]) for j in range(0, n, chunk)], dim=1)  # (B, n, m)
    return D.transpose(1, 2)
