"""Central finite differences of ``f`` itself: the check that needs no autograd at all."""

from __future__ import annotations

import torch
from torch.func import vmap

from ._budget import format_bytes, get_memory_budget
from ._errors import HessvizError
from ._problem import Problem, grad_mode, prepare


def default_fd_step(dtype: torch.dtype, scale: float = 1.0) -> float:
    """The default step ``eps^(1/4) · max(1, scale)`` for central second differences.

    The truncation error of a central second difference grows like ``h²`` and the round-off
    error like ``eps/h²``; they balance at ``h ≈ eps^(1/4)`` (relative to the size of ``x``).

    Example:
        >>> round(default_fd_step(torch.float64), 6), round(default_fd_step(torch.float32), 4)
        (0.000122, 0.0186)
    """
    return float(torch.finfo(dtype).eps) ** 0.25 * max(1.0, float(scale))


def _step(fname: str, step: object, p: Problem) -> float:
    if step is None:
        return default_fd_step(p.X.dtype, float(p.X.abs().max()))
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
        raise HessvizError(
            f"{fname}: step must be a positive number, got {step!r}; pass None for the default "
            f"eps^(1/4) ≈ {default_fd_step(p.X.dtype):.2g} for {p.X.dtype}."
        )
    return float(step)


def _evaluate(fname: str, p: Problem, points: torch.Tensor) -> torch.Tensor:
    """``f`` at ``(B, P, n)`` perturbed points → selected outputs ``(B, P, m)``, in chunks."""
    B, P, n = points.shape
    sel = torch.tensor(p.sel, device=points.device)
    per_point = (n + p.M) * points.element_size() * 4
    budget = get_memory_budget()
    if B * P * (n + p.m) * points.element_size() > budget:
        raise HessvizError(
            f"{fname}: {B * P} function evaluations of {n} inputs would need about "
            f"{format_bytes(B * P * (n + p.m) * points.element_size())}, over the memory budget "
            f"of {format_bytes(budget)}; select fewer outputs, compare the diagonal instead, or "
            "raise it with hv.set_memory_budget(nbytes)."
        )
    chunk = max(1, int(budget // per_point))
    flat = points.reshape(B * P, n)
    out = []
    with torch.no_grad():
        for i in range(0, B * P, chunk):
            part = flat[i : i + chunk]
            if p.batched:
                Y = p.batch_fn(part)
            else:
                try:
                    Y = vmap(p.sample_fn)(part)
                except Exception:  # f does not vmap (e.g. Python control flow on values)
                    Y = torch.stack([p.sample_fn(row) for row in part])
            out.append(Y.index_select(1, sel))
    return torch.cat(out).reshape(B, P, p.m)


@grad_mode()
def fd_hessian(f, x, *, step=None, batched=False, outputs=None, flat=False) -> torch.Tensor:
    """Central finite-difference Hessian, same shape as :func:`hessviz.hessian`.

    ``H_jk ≈ [f(x+he_j+he_k) − f(x+he_j−he_k) − f(x−he_j+he_k) + f(x−he_j−he_k)] / 4h²`` for
    ``j ≤ k`` (mirrored, so the result is exactly symmetric); ``2n(n+1)`` evaluations per sample,
    in ``x``'s dtype. ``step`` defaults to :func:`default_fd_step` (``≈ eps^(1/4)``).

    Example:
        >>> x = torch.tensor([0.5, -1.0], dtype=torch.float64)
        >>> H = fd_hessian(lambda x: x[0] ** 2 * x[1], x)  # exact: [[2x₁, 2x₀], [2x₀, 0]]
        >>> torch.allclose(H, torch.tensor([[-2.0, 1.0], [1.0, 0.0]], dtype=x.dtype), atol=1e-7)
        True
    """
    p, _ = prepare("fd_hessian", f, x, batched=batched, outputs=outputs)
    h = _step("fd_hessian", step, p)
    B, n = p.X.shape
    j, k = torch.triu_indices(n, n, device=p.X.device)
    E = torch.eye(n, dtype=p.X.dtype, device=p.X.device) * h
    signs = ((1, 1), (1, -1), (-1, 1), (-1, -1))
    offsets = torch.cat([sj * E[j] + sk * E[k] for sj, sk in signs])  # (4T, n)
    Y = _evaluate("fd_hessian", p, p.X[:, None, :] + offsets[None])  # (B, 4T, m)
    pp, pm, mp, mm = Y.reshape(B, 4, -1, p.m).unbind(1)
    upper = ((pp - pm - mp + mm) / (4 * h * h)).transpose(1, 2)  # (B, m, T)
    H = p.X.new_zeros(B, p.m, n, n)
    H[:, :, j, k] = upper
    H[:, :, k, j] = upper
    return p.shape_result(H, 2, flat)


@grad_mode()
def fd_diagonal(f, x, *, step=None, batched=False, outputs=None, flat=False) -> torch.Tensor:
    """Central finite-difference diagonal ``[f(x+he_j) − 2f(x) + f(x−he_j)] / h²``.

    Same shape as :func:`hessviz.hessian_diagonal`; ``2n + 1`` evaluations per sample.

    Example:
        >>> x = torch.tensor([0.5, -1.0], dtype=torch.float64)
        >>> fd_diagonal(lambda x: torch.sin(x).sum(), x)
        tensor([-0.4794,  0.8415], dtype=torch.float64)
    """
    p, _ = prepare("fd_diagonal", f, x, batched=batched, outputs=outputs)
    h = _step("fd_diagonal", step, p)
    B, n = p.X.shape
    E = torch.eye(n, dtype=p.X.dtype, device=p.X.device) * h
    zero = torch.zeros(1, n, dtype=p.X.dtype, device=p.X.device)
    Y = _evaluate("fd_diagonal", p, p.X[:, None, :] + torch.cat([E, -E, zero])[None])
    plus, minus, center = Y[:, :n], Y[:, n : 2 * n], Y[:, 2 * n :]
    D = ((plus - 2 * center + minus) / (h * h)).transpose(1, 2)  # (B, m, n)
    return p.shape_result(D, 1, flat)
