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

from .. import _gemm
from .._memory import FRESH, Workspace


def scaled_weight(
    scale: torch.Tensor, W: torch.Tensor, ws: Workspace = FRESH, role: object = "formed"
) -> torch.Tensor:
    """``diag(scale) Wᵀ`` per sample, ``(B, K_in, K)`` (``scale``: ``(B, K_in)``, ``W``:
    ``(K, K_in)``), in ``ws``'s buffer ``role``."""
    (B, K_in), K = scale.shape, W.shape[0]
    # Wᵀ copied contiguous first: a product broadcast against a transposed view runs
    # element by element (3.4× slower at 2 × 256 × 256 here, copy included)
    W_T = ws((role, "W_T"), K_in, K, like=scale).copy_(W.T)
    return torch.mul(scale[:, :, None], W_T, out=ws(role, B, K_in, K, like=scale))


@dataclass(frozen=True)
class Jacobian:
    """``∂z/∂u`` with rows = directions of ``u``: ``data`` (None with no ``factors``: the
    identity), or ``factors`` ``(s, W)`` — per sample ``diag(s) Wᵀ``, ``(B, K_in, K)``, kept as
    its factors ``s`` ``(B, K_in)`` and ``W`` ``(K, K_in)`` (what the Laplacian asks for: its
    column norms need no ``(B, K_in, K)`` tensor, :meth:`squared_column_norms`)."""

    data: torch.Tensor | None = None
    factors: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def rows(self) -> torch.Tensor | None:
        """The rows, ``(r, K)`` or ``(B, r, K)``; None for the identity. Factored rows are
        formed here, into a fresh tensor, at every read."""
        return self.data if self.factors is None else scaled_weight(*self.factors)

    @property
    def identity(self) -> bool:
        return self.data is None and self.factors is None

    @property
    def shared(self) -> bool:
        """The same for every sample: rows ``(r, K)``."""
        return self.data is not None and self.data.ndim == 2

    def scaled(self, scale: torch.Tensor, out: torch.Tensor | None = None) -> Jacobian:
        """The Jacobian of ``σ(z)``: ``rows · diag(σ')`` per sample, ``(B, r, K)``.

        ``scale`` is σ' of shape ``(B, K)``; ``out`` an optional contiguous buffer.
        """
        if self.rows is None:  # the identity scaled is diag(σ') itself
            return Jacobian(torch.diag_embed(scale))
        return Jacobian(torch.mul(self.rows, scale[:, None, :], out=out))

    def add_diagonal_term(self, D: torch.Tensor | None, c: torch.Tensor) -> torch.Tensor:
        """``D + Σ_k c_k J_k²`` (the diagonal of the term ``Jᵀ diag(c) J``), ``(B, m, r)``.
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

    def squared_column_norms(
        self, M: torch.Tensor | None, K: int, like: torch.Tensor, ws: Workspace = FRESH
    ):
        """``Σ_j (P J)_{jk}²`` given ``M = PᵀP`` (None: ``P`` is the identity): ``(K,)`` or
        ``(B, K)``; ``(PᵀP) J`` in a buffer of ``ws``. Per-sample rows are consumed
        (overwritten)."""
        if self.factors is not None:  # column k of diag(s) Wᵀ is s ⊙ W[k]
            s, W = self.factors
            if M is None:  # Σ_j s_j² W_kj²: one small product
                return torch.mm(s * s, (W * W).T)
            # T = Gᵀ per sample, contiguous: (Gᵀ M) row k · G[:, k], M = PᵀP symmetric; the
            # samples fold into the rows of one GEMM, and no transposed copy of W is made
            B, (K_out, K_in) = s.shape[0], W.shape
            T = torch.mul(W, s[:, None, :], out=ws("T", B, K_out, K_in, like=s))
            TM = _gemm.mm(T.view(-1, K_in), M, out=ws("MG", B * K_out, K_in, like=s))
            return TM.view(B, K_out, K_in).mul_(T).sum(-1)  # vecdot: a fresh product first
        G = self.rows
        if G is None:
            return like.new_ones(K) if M is None else M.diagonal()
        if M is None:
            return (G * G if self.shared else G.square_()).sum(-2)
        if self.shared:
            return ((M @ G) * G).sum(-2)
        MG = _gemm.bmm(M.expand(G.shape[0], *M.shape), G, out=ws("MG", *G.shape, like=G))
        return MG.mul_(G).sum(-2)
