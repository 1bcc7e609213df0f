"""Jacobians as the layer-wise engine carries them: identity, shared by every sample, or per sample.

``∂z_l/∂u`` is stored transposed, one row per direction of ``u`` (the input ``x``, or ``z_1``
when the stem narrows it). Which of three kinds it is decides the cheapest algebra:

- **identity** (no tensor): ``z_l`` is ``u`` itself; a term ``Jᵀ diag(c) J`` is ``diag(c)``;
- **shared**, rows ``(r, K)``: the same for every sample (the affine stem's), so the samples and
  outputs of a batch fold into the rows of one GEMM;
- **per sample**, rows ``(B, r, K)``: one batched GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._memory import empty


@dataclass(frozen=True)
class Jacobian:
    """``∂z/∂u`` with rows = directions of ``u``; ``rows`` None is the identity."""

    rows: torch.Tensor | None = None

    @property
    def identity(self) -> bool:
        return self.rows is None

    @property
    def shared(self) -> bool:
        """The same for every sample: rows ``(r, K)``."""
        return self.rows is not None and self.rows.ndim == 2

    def scaled(self, scale: torch.Tensor, out: torch.Tensor | None = None) -> Jacobian:
        """The Jacobian of ``σ(z)``: ``rows · diag(σ')`` per sample, ``(B, r, K)``.

        ``scale`` is σ' of shape ``(B, K)``; ``out`` an optional contiguous buffer.
        """
        if self.rows is None:  # the identity scaled is diag(σ') itself
            return Jacobian(torch.diag_embed(scale))
        return Jacobian(torch.mul(self.rows, scale[:, None, :], out=out))

    def add_term(self, H: torch.Tensor | None, c: torch.Tensor, scratch=None) -> torch.Tensor:
        """``H + Jᵀ diag(c) J`` for every sample and output, ``(B, m, r, r)``; ``c`` is
        ``(B, m, K)``, ``H`` None or accumulated in place: ``(J ⊙ c) Jᵀ``, one (batched) GEMM."""
        B, m, K = c.shape
        G = self.rows
        if G is None:  # the term is diag(c)
            if H is None:
                H = empty(B, m, K, K, like=c).zero_()
                H.diagonal(dim1=-2, dim2=-1).copy_(c)
                return H
            H.diagonal(dim1=-2, dim2=-1).add_(c)
            return H
        r = G.shape[-2]
        # Written into a contiguous (B, m, r, K) buffer: a broadcast product may pick another
        # memory order, and the GEMM below needs these rows contiguous.
        Gc = empty(B, m, r, K, like=c) if scratch is None else scratch(B, m, r, K, like=c)
        torch.mul(G if self.shared else G[:, None], c[:, :, None, :], out=Gc)
        if self.shared:  # fold samples and outputs into the rows of one GEMM
            if H is None:
                H = empty(B, m, r, r, like=c)
                torch.mm(Gc.view(-1, K), G.T, out=H.view(-1, r))
                return H
            H.view(-1, r).addmm_(Gc.view(-1, K), G.T)
            return H
        if H is None:
            H = empty(B, m, r, r, like=c)
            torch.bmm(Gc.view(B, m * r, K), G.mT, out=H.view(B, m * r, r))
            return H
        H.view(B, m * r, r).baddbmm_(Gc.view(B, m * r, K), G.mT)
        return H

    def add_diagonal_term(self, D: torch.Tensor | None, c: torch.Tensor) -> torch.Tensor:
        """``D + Σ_k c_k J_k²`` (the diagonal of :meth:`add_term`'s term), ``(B, m, r)``.
        Per-sample rows are consumed (squared in place)."""
        G = self.rows
        if G is None:  # the term's diagonal is c itself
            return c.contiguous() if D is None else D.add_(c)
        if self.shared:
            B, m, K = c.shape
            if D is None:
                return (c.reshape(-1, K) @ (G * G).T).view(B, m, -1)
            D.view(B * m, -1).addmm_(c.reshape(-1, K), (G * G).T)
            return D
        sq = G.square_().mT
        return torch.bmm(c, sq) if D is None else D.baddbmm_(c, sq)

    def squared_column_norms(self, M: torch.Tensor | None, K: int, like: torch.Tensor):
        """``Σ_j (P J)_{jk}²`` given ``M = PᵀP`` (None: ``P`` is the identity): ``(K,)`` or
        ``(B, K)``. Per-sample rows are consumed (overwritten)."""
        G = self.rows
        if G is None:
            return like.new_ones(K) if M is None else M.diagonal()
        if M is None:
            return (G * G if self.shared else G.square_()).sum(-2)
        if self.shared:
            return ((M @ G) * G).sum(-2)
        MG = torch.bmm(M.expand(G.shape[0], *M.shape), G)  # (PᵀP) G, per sample
        return MG.mul_(G).sum(-2)
