"""The proof a fast path gives before it is trusted: agreement with autograd on the model at hand.

A fast engine's Hessians of the first sample, contracted with random output weights ``w`` and a
random direction ``v``, must equal a double-backward Hessian-vector product of ``f`` itself —
the one derivative PyTorch computes by the most trusted route — to round-off. The check costs
about one Hessian of one sample and runs once per plan (engines cache the verdict).
"""

from __future__ import annotations

import torch

from ._problem import Problem


def mismatch(p: Problem, X0: torch.Tensor, H: torch.Tensor, sel) -> float | None:
    """Relative error of ``H`` (``(m, n, n)``, the Hessians of sample ``X0``, ``(1, n)``) against
    autograd, or ``None`` when it agrees to round-off."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    w = torch.randn(len(sel), generator=gen, dtype=torch.float64).to(X0)
    v = torch.randn(p.n, generator=gen, dtype=torch.float64).to(X0)
    mine = torch.einsum("i,ipq,q->p", w, H, v)
    with torch.enable_grad():
        xg = X0.detach().clone().requires_grad_(True)
        y = p.batch_fn(xg)[0, list(sel)] @ w
        ref = None
        if y.requires_grad:
            (g,) = torch.autograd.grad(y, xg, create_graph=True, allow_unused=True)
            if g is not None and g.requires_grad:
                ref = torch.autograd.grad(g.reshape(-1) @ v, xg, allow_unused=True)[0]
    ref = torch.zeros_like(mine) if ref is None else ref.reshape(-1)
    eps = torch.finfo(X0.dtype).eps
    scale = float(ref.abs().max() + mine.abs().max()) + float(H.abs().max()) * 1e-3 + eps
    err = float((mine - ref).abs().max())
    if err <= 1e3 * eps**0.75 * scale * max(1.0, p.n**0.5):
        return None
    return err / scale
