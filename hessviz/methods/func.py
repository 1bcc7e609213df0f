"""``torch.func``: forward-over-reverse (``jacfwd(jacrev)``), vmapped over the batch.

Falls back to reverse-over-reverse where an operator has no forward-mode rule.
"""

from __future__ import annotations

import torch
from torch.func import jacfwd, jacrev, jvp, vmap

from .._problem import Problem


def _no_forward_rule(err: Exception) -> bool:
    text = str(err).lower()
    return "forward" in text and ("not implemented" in text or "support" in text)


def _selected(p: Problem, sel: tuple[int, ...]):
    index = torch.tensor(sel, device=p.X.device)
    return lambda x: p.sample_fn(x).index_select(0, index)


def hessian(p: Problem, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    h = _selected(p, sel)
    try:
        return vmap(jacfwd(jacrev(h)))(X)
    except (RuntimeError, NotImplementedError) as err:
        if not _no_forward_rule(err):
            raise
        return vmap(jacrev(jacrev(h)))(X)


def diagonal(p: Problem, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    return torch.diagonal(hessian(p, X, sel), dim1=-2, dim2=-1)


def hvp(p: Problem, X: torch.Tensor, V: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    h = _selected(p, sel)

    def one(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return jvp(jacrev(h), (x,), (v,))[1]  # (m, n)

    try:
        return vmap(one)(X, V)
    except (RuntimeError, NotImplementedError) as err:
        if not _no_forward_rule(err):
            raise
        return vmap(lambda x, v: jacrev(lambda y: jacrev(h)(y) @ v)(x))(X, V)
