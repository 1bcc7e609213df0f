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

from ._problem import Problem, math_attention


def random_directions(p: Problem, r: int, like: torch.Tensor) -> torch.Tensor:
    """``(r, n)`` fixed pseudo-random directions (the same for every call)."""
    gen = torch.Generator(device="cpu").manual_seed(1)
    return torch.randn(r, p.n, generator=gen, dtype=torch.float64).to(like)


def _weights(m: int, like: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(0)
    return torch.randn(m, generator=gen, dtype=torch.float64).to(like)


def _autograd_hvps(p: Problem, X: torch.Tensor, w: torch.Tensor, sel, V: torch.Tensor):
    """``(r, n)``: ``(Σ_i w_i H_i) v`` of the first sample for each row ``v`` of ``V``.

    Double backward of the batch: samples are independent, so the gradient of ``Σ_b w·y_b``
    holds each sample's own gradient, and a direction nonzero in the first row only picks that
    sample's Hessian. (Some ``f`` are only defined on their whole batch, e.g. with a fixed
    label tensor, so the batch is kept.)
    """
    with torch.enable_grad(), math_attention():
        xg = X.detach().clone().requires_grad_(True)
        y = (p.batch_fn(xg)[:, list(sel)] @ w).sum()
        if not y.requires_grad:
            return torch.zeros_like(V)
        (g,) = torch.autograd.grad(y, xg, create_graph=True, allow_unused=True)
        if g is None or not g.requires_grad:
            return torch.zeros_like(V)
        rows = []
        for v in V:
            (h,) = torch.autograd.grad(g[0] @ v, xg, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(v) if h is None else h[0])
        return torch.stack(rows)


def relative_error(mine: torch.Tensor, ref: torch.Tensor, n: int) -> float | None:
    eps = torch.finfo(ref.dtype).eps
    scale = float(ref.abs().max() + mine.abs().max()) + eps
    err = float((mine - ref).abs().max())
    return None if err <= 1e3 * eps**0.75 * scale * max(1.0, n**0.5) else err / scale


def projected_mismatch(p: Problem, X, P: torch.Tensor, HP: torch.Tensor, sel) -> float | None:
    """``HP``: ``(m, r, r)``, the Hessians of the first sample of ``X`` (``(B, n)``) projected
    on the rows of ``P`` (``(r, n)``), i.e. ``P H_i Pᵀ``."""
    w = _weights(len(sel), X)
    mine = torch.einsum("i,ipq->pq", w, HP)
    ref = P @ _autograd_hvps(p, X, w, sel, P).T
    return relative_error(mine, ref, p.n)


def hvp_mismatch(p: Problem, X, v: torch.Tensor, Hv: torch.Tensor, sel) -> float | None:
    """``Hv``: ``(m, n)``, the products ``H_i v`` of the first sample of ``X`` with ``v``."""
    w = _weights(len(sel), X)
    mine = w @ Hv
    ref = _autograd_hvps(p, X, w, sel, v[None])[0]
    return relative_error(mine, ref, p.n)


def agrees(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Whether a second kernel's result equals a proved one's to round-off: the same shape, and
    within ``1000 ε`` of it, relative to its largest entry (a kernel whose operations differ
    only in order or in a few ulps of ``tanh`` lands far inside)."""
    tol = 1e3 * torch.finfo(got.dtype).eps
    return got.shape == expected.shape and torch.allclose(
        got, expected, rtol=tol, atol=tol * (1 + float(expected.abs().max()))
    )
