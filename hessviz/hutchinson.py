"""Hutchinson's stochastic estimate of the Hessian diagonal: ``diag(H) = E[v ⊙ Hv]``."""

from __future__ import annotations

import dataclasses

import torch

from ._errors import HessvizError
from ._problem import grad_mode, prepare
from .api import _execute


@grad_mode()
def hutchinson_diagonal(
    f, x, *, samples=64, seed=0, batched=False, outputs=None, flat=False
) -> torch.Tensor:
    """Unbiased estimate of :func:`hessviz.hessian_diagonal` from ``samples`` Rademacher probes.

    ``E[v ⊙ Hv] = diag(H)`` for ``v`` with independent ±1 entries; the error of the mean of
    ``s`` probes shrinks like ``1/√s`` and is driven by the off-diagonal entries of ``H``. The
    probes come from a CPU generator seeded with ``seed``, so results are reproducible on every
    device. All probes' HVPs run as one batched call. Same shape as ``hessian_diagonal``.

    Example:
        >>> x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
        >>> est = hutchinson_diagonal(lambda x: torch.sin(x).sum(), x, samples=4)
        >>> torch.allclose(est, -torch.sin(x))  # a diagonal Hessian is recovered exactly
        True
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise HessvizError(
            f"hutchinson_diagonal: samples must be an int ≥ 1, got {samples!r}; "
            "64 is a reasonable start (the error shrinks like 1/√samples)."
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HessvizError(f"hutchinson_diagonal: seed must be an int, got {seed!r}.")
    p, y = prepare("hutchinson_diagonal", f, x, batched=batched, outputs=outputs)
    B, n = p.X.shape
    gen = torch.Generator().manual_seed(seed)
    V = torch.randint(0, 2, (B, samples, n), generator=gen).to(p.X) * 2 - 1
    # Every probe becomes one more row of a batched problem (samples are independent rows).
    rows = dataclasses.replace(p, X=p.X.repeat_interleave(samples, 0))
    HV = _execute(
        "hutchinson_diagonal",
        "hvp",
        rows,
        y.reshape(B, -1).repeat_interleave(samples, 0),
        "auto",
        V.reshape(B * samples, n),
    )  # (B·s, m, n)
    D = (V.reshape(B, samples, 1, n) * HV.reshape(B, samples, p.m, n)).mean(1)
    return p.shape_result(D, 1, flat)
