"""The forum-thread method: one double-backward per output and per input coordinate.

Kept as a teaching reference and as the benchmark's slow baseline. ``allow_unused=True`` and the
``requires_grad`` checks are what turn "One of the differentiated Tensors appears to not have been
used in the graph" (linear models) into the correct answer: zeros.
"""

from __future__ import annotations

import torch

from .._problem import Problem


def _gradients(p: Problem, X: torch.Tensor, sel: tuple[int, ...]):
    """Yield ``(a, g)``: for each selected output, its per-sample gradient ``(B, n)`` with graph."""
    X = X.detach().requires_grad_(True)
    Y = p.batch_fn(X)
    for a, i in enumerate(sel):
        g = None
        if Y.requires_grad:
            (g,) = torch.autograd.grad(Y[:, i].sum(), X, create_graph=True, allow_unused=True)
        yield a, X, (g if g is not None and g.requires_grad else None)


def hessian(p: Problem, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    B, n = X.shape
    H = X.new_zeros(B, len(sel), n, n)
    for a, Xg, g in _gradients(p, X, sel):
        if g is None:
            continue
        for j in range(n):
            (row,) = torch.autograd.grad(g[:, j].sum(), Xg, retain_graph=True, allow_unused=True)
            if row is not None:
                H[:, a, j] = row
    return H


def diagonal(p: Problem, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    B, n = X.shape
    D = X.new_zeros(B, len(sel), n)
    for a, Xg, g in _gradients(p, X, sel):
        if g is None:
            continue
        for j in range(n):
            (row,) = torch.autograd.grad(g[:, j].sum(), Xg, retain_graph=True, allow_unused=True)
            if row is not None:
                D[:, a, j] = row[:, j]
    return D


def hvp(p: Problem, X: torch.Tensor, V: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    B, n = X.shape
    R = X.new_zeros(B, len(sel), n)
    for a, Xg, g in _gradients(p, X, sel):
        if g is None:
            continue
        (r,) = torch.autograd.grad((g * V).sum(), Xg, retain_graph=True, allow_unused=True)
        if r is not None:
            R[:, a] = r
    return R
