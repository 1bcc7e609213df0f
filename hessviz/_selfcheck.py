"""The proof a fast path gives before it is trusted: agreement with autograd on the model at hand.

A fast engine's answer for the first sample, contracted with random output weights ``w``, must
equal what double backward — the route PyTorch computes second derivatives by that is trusted for
every op — gives for ``f`` itself, to round-off. Two forms, both about the cost of a few
gradients of one sample:

- :func:`projected_mismatch`: the Hessians projected on ``r`` random directions, ``Pᵀ H P``;
- :func:`hvp_mismatch`: one Hessian-vector product ``H v``.

Each returns ``None`` when the answers agree, else the relative error.
"""

from __future__ import annotations

import torch

from ._problem import Problem


def random_directions(p: Problem, r: int, like: torch.Tensor) -> torch.Tensor:
    """``(r, n)`` fixed pseudo-random directions (the same for every call)."""
    gen = torch.Generator(device="cpu").manual_seed(1)
    return torch.randn(r, p.n, generator=gen, dtype=torch.float64).to(like)


def _weights(m: int, like: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(0)
    return torch.randn(m, generator=gen, dtype=torch.float64).to(like)


def _autograd_hvps(p: Problem, X0: torch.Tensor, w: torch.Tensor, sel, V: torch.Tensor):
    """``(r, n)``: ``(Σ_i w_i H_i) v`` for each row ``v`` of ``V``, by double backward."""
    with torch.enable_grad():
        xg = X0.detach().clone().requires_grad_(True)
        y = p.batch_fn(xg)[0, list(sel)] @ w
        if not y.requires_grad:
            return torch.zeros_like(V)
        (g,) = torch.autograd.grad(y, xg, create_graph=True, allow_unused=True)
        if g is None or not g.requires_grad:
            return torch.zeros_like(V)
        rows = []
        for v in V:
            (h,) = torch.autograd.grad(g.reshape(-1) @ v, xg, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(v) if h is None else h.reshape(-1))
        return torch.stack(rows)


def relative_error(mine: torch.Tensor, ref: torch.Tensor, n: int) -> float | None:
    eps = torch.finfo(ref.dtype).eps
    scale = float(ref.abs().max() + mine.abs().max()) + eps
    err = float((mine - ref).abs().max())
    return None if err <= 1e3 * eps**0.75 * scale * max(1.0, n**0.5) else err / scale


def projected_mismatch(p: Problem, X0, P: torch.Tensor, HP: torch.Tensor, sel) -> float | None:
    """``HP``: ``(m, r, r)``, the Hessians of sample ``X0`` (``(1, n)``) projected on the rows of
    ``P`` (``(r, n)``), i.e. ``P H_i Pᵀ``."""
    w = _weights(len(sel), X0)
    mine = torch.einsum("i,ipq->pq", w, HP)
    ref = P @ _autograd_hvps(p, X0, w, sel, P).T
    return relative_error(mine, ref, p.n)


def hvp_mismatch(p: Problem, X0, v: torch.Tensor, Hv: torch.Tensor, sel) -> float | None:
    """``Hv``: ``(m, n)``, the products ``H_i v`` of sample ``X0`` (``(1, n)``) with ``v``."""
    w = _weights(len(sel), X0)
    mine = w @ Hv
    ref = _autograd_hvps(p, X0, w, sel, v[None])[0]
    return relative_error(mine, ref, p.n)
