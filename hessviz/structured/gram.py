r"""The full Hessian's assembly: ``H_i = Σ_l G_l diag(c_{l,i}) G_lᵀ`` for every sample and output.

Each term is symmetric, so only the upper block triangle is computed — ``P`` row panels, panel
``[a, e)`` against columns ``a:`` (``(P + 1) / 2P`` of the GEMM work) — and mirrored once at
the end. For the panels' GEMMs to fold the ``m`` outputs into their rows, the sum is kept with
rows ordered (input direction, output): ``(B, r, m, r)``; one copy brings it to ``(B, m, r, r)``
(none for a single output, where both orders are the same memory). Measured on the benchmark
grid's chains (float64, one core): 1.5–1.8× faster with 10 outputs, 1.1–1.4× with 3, up to 1.1×
with one; a matrix too small for panels (see :func:`panel_edges`) is one GEMM per term as before.

``G_l`` (rows = the ``r`` directions) is None for the identity, ``(r, K)`` when the same for
every sample, ``(B, r, K)`` per sample; ``c_l`` is ``(B, m, K)``.
"""

from __future__ import annotations

import math

import torch

from .. import _gemm
from .._memory import FRESH, Scratch, Workspace, empty


def panel_edges(r: int, m: int) -> list[int]:
    """Row edges of the panels for an ``r × r`` matrix and ``m`` outputs: ``[0, …, r]``.

    Panels halve while they keep at least 8 rows and 48 (row, output) pairs, up to 16 of them —
    smaller GEMMs lost more speed than the symmetry saves here. ``[0, r]`` (one panel): no
    symmetry used.
    """
    P = 1
    while P < 16 and r // (2 * P) >= 8 and (r // (2 * P)) * m >= 48:
        P *= 2
    return [r * i // P for i in range(P + 1)]


class Gram:
    """Sums ``Σ_l G_l diag(c_l) G_lᵀ`` (:meth:`add`) into ``(B, m, r, r)`` (:meth:`result`):
    into ``out`` when given (a contiguous ``(B, m, r, r)`` view, e.g. one chunk's rows of the
    whole batch's result), else a new tensor. The panels' sum and the scaled copies are
    temporaries from ``ws`` (kept between a plan's calls: no page faults)."""

    def __init__(
        self,
        B: int,
        m: int,
        r: int,
        like: torch.Tensor,
        ws: Workspace = FRESH,
        out: torch.Tensor | None = None,
    ) -> None:
        self.B, self.m, self.r = B, m, r
        self.edges = panel_edges(r, m)
        self.panels = len(self.edges) > 2
        self.out = empty(B, m, r, r, like=like) if out is None else out
        # rows (direction, output) for the panels, (output, direction) for one plain GEMM; with
        # one output both orders are the same memory: the result itself
        if self.panels and m > 1:
            self.acc = ws("gram", B, r, m, r, like=like)
        else:
            self.acc = self.out.view(B, r, m, r) if self.panels else self.out
        self.fresh = True  # nothing written yet: the first term overwrites, later ones add
        # the scaled copy G ⊙ c, dead after each GEMM: one buffer per call, or the plan's
        self.rows = _Kept(ws) if ws.keeps else Scratch()
        self.ws = ws

    def add(self, G: torch.Tensor | None, c: torch.Tensor) -> None:
        """Add ``G diag(c) Gᵀ`` for every sample and output (``c``: ``(B, m, K)``)."""
        B, m, r = self.B, self.m, self.r
        if G is None:  # the term is diag(c)
            if self.fresh:
                self.acc.zero_()
            diagonal = (
                self.acc.diagonal(dim1=1, dim2=3)
                if self.panels
                else self.acc.diagonal(dim1=-2, dim2=-1)
            )  # (B, m, r) either way
            diagonal.add_(c)
            self.fresh = False
            return
        K = G.shape[-1]
        shared = G.ndim == 2
        if not self.panels:
            # one GEMM: rows (output, direction); a shared G folds samples and outputs into rows
            Gc = torch.mul(
                G if shared else G[:, None], c[:, :, None, :], out=self.rows(B, m, r, K, like=c)
            )
            if shared:
                self._product(self.acc.view(-1, r), Gc.view(-1, K), G.T)
            else:
                self._product(self.acc.view(B, m * r, r), Gc.view(B, m * r, K), G.mT)
            self.fresh = False
            return
        # the right factors Gᵀ row-major, copied once: MKL read a transposed one per panel
        # 1.5× slower on a Xeon ((80, 384) @ (384, 64) per sample; 7.6 against 8.5 ms for
        # one 16-sample chunk's panels at n = 64, 10 outputs, copy included)
        GT = G.T.contiguous() if shared else self.ws("gram_GT", B, K, r, like=G).copy_(G.mT)
        for a, e in zip(self.edges[:-1], self.edges[1:]):
            rows = G[None, a:e, None, :] if shared else G[:, a:e, None, :]
            Gc = torch.mul(rows, c[:, None], out=self.rows(B, e - a, m, K, like=c))
            right = GT[:, a:].expand(B, K, r - a) if shared else GT[:, :, a:]
            # rows (j, i) of the panel are one stride apart (r): a view, written in place
            out = self.acc[:, a:e, :, a:].view(B, (e - a) * m, r - a)
            self._product(out, Gc.view(B, (e - a) * m, K), right)
        self.fresh = False

    def _product(self, out: torch.Tensor, A: torch.Tensor, Bt: torch.Tensor) -> None:
        """``out = A @ Bt`` on the first term, ``out += A @ Bt`` after (batched or not)."""
        if out.ndim == 2:
            _gemm.mm(A, Bt, out=out) if self.fresh else out.addmm_(A, Bt)
        else:
            _gemm.bmm(A, Bt, out=out) if self.fresh else out.baddbmm_(A, Bt)

    def result(self) -> torch.Tensor:
        """``(B, m, r, r)``, symmetric; zeros if no term was added."""
        m, H = self.m, self.out
        if self.fresh:
            return H.zero_()
        if not self.panels:
            return H
        pairs = list(zip(self.edges[:-1], self.edges[1:]))
        if m == 1:  # (B, r, 1, r) is (B, 1, r, r): mirror the upper panels in place
            for a, e in pairs:
                H[:, 0, e:, a:e] = H[:, 0, a:e, e:].mT
            return H
        for a, e in pairs:
            H[:, :, a:e, a:] = self.acc[:, a:e, :, a:].transpose(1, 2)
            H[:, :, e:, a:e] = self.acc[:, a:e, :, e:].permute(0, 2, 3, 1)
        return H


class _Kept:
    """:class:`~hessviz._memory.Scratch`'s role served by a plan's workspace (one buffer per
    size, kept between calls)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def __call__(self, *shape: int, like: torch.Tensor) -> torch.Tensor:
        return self.ws("gram_rows", math.prod(shape), like=like).view(shape)
