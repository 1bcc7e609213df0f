r"""Lean kernels for the most common network: a chain of Linear layers and activations.

``y = W_{L+1} σ_L(… σ_1(W_1 x + b_1) …) + b_{L+1}`` with one vector per sample — the multilayer
perceptrons of the forum threads, physics-informed networks ``u: R^d → R``, and any hand-written
``forward`` the graph engine lowers to such a chain. The layer-wise engine
(:mod:`hessviz.structured.kernels`) hands these here; the mathematics is the same identity,

    ``H_i = Σ_l J_lᵀ diag(σ_l''(z_l) ⊙ ∂y_i/∂a_l) J_l``,  ``J_l = ∂z_l/∂x``,

written with as few tensor operations as it needs: per-call cost on small models is the number
of operations, on large ones the GEMMs. Notation (per sample ``b``, selected output ``i``):

- ``G_l``: ``J_lᵀ`` as ``(B, n, K_l)`` (rows are input directions); ``G_1 = W_1ᵀ`` is the same
  for every sample, ``(n, K_1)``, and is never copied per sample;
- ``c_l = σ_l'' ⊙ ∂y_i/∂a_l``: ``(B, m, K_l)``, from one reverse sweep for all outputs.

Every kernel takes ``X`` of shape ``(B, n)`` and the selected flat outputs ``sel`` (``m`` of
them) and returns ``(B, m, n, n)`` Hessians, ``(B, m, n)`` diagonals or HVPs, or ``(B, m)``
Laplacians, without autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._memory import Scratch, empty
from .gram import Gram

#: ``z ↦ (σ(z), σ'(z), σ''(z))`` for one activation
Derivs = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Chain:
    """``L`` activations between ``L + 1`` Linear layers.

    Attributes:
        linears: the ``nn.Linear`` modules (their ``weight``/``bias`` are read at every call).
        derivs: one callable per activation.
        activations: the activation modules ``derivs`` run (their settings, e.g. softplus's
            ``beta``, are read at every call).
    """

    linears: tuple
    derivs: tuple[Derivs, ...]
    activations: tuple = ()


def _values(ch: Chain, X: torch.Tensor) -> tuple[list, list]:
    """σ_l'(z_l) and σ_l''(z_l), ``(B, K_l)`` each; the output layer's value is never needed."""
    a = X
    s1s, s2s = [], []
    for lin, derivs in zip(ch.linears, ch.derivs):
        a, s1, s2 = derivs(torch.nn.functional.linear(a, lin.weight, lin.bias))
        s1s.append(s1)
        s2s.append(s2)
    return s1s, s2s


def _output_rows(ch: Chain, sel: tuple[int, ...]) -> torch.Tensor:
    """``∂y_i/∂a_L`` for the selected outputs, ``(m, K_L)``: rows of the last weight matrix, the
    same for every sample."""
    W_out = ch.linears[-1].weight
    return W_out if sel == tuple(range(W_out.shape[0])) else W_out[list(sel)]


def _reverse(ch: Chain, s1s: list, s2s: list, sel: tuple[int, ...]) -> list:
    """``c_l`` for every activation (``(B, m, K_l)``) from one reverse sweep for all outputs."""
    d = _output_rows(ch, sel)
    cs = []
    for k in range(len(ch.derivs) - 1, -1, -1):
        cs.append(s2s[k][:, None, :] * d)  # (B, m, K_k)
        if k > 0:
            d = torch.matmul(s1s[k][:, None, :] * d, ch.linears[k].weight)
    cs.reverse()
    return cs


def _sweep(ch: Chain, X: torch.Tensor, s1s: list, term: Callable, into=None) -> None:
    """Carry ``G_l = J_lᵀ`` through the chain and hand each to ``term(l, G_l)``.

    ``G_1 = W_1ᵀ`` is ``(n, K_1)``; the later ones are ``(B, n, K_l)``, valid only during the
    call (two buffers serve every layer: the scaled Jacobian and the next one). With ``into``,
    a ``(B, n, ΣK_l)`` buffer, every ``G_l`` is written side by side there instead and kept.
    """
    B, n = X.shape
    G = ch.linears[0].weight.T.contiguous()  # products with a transposed view would inherit it
    if into is not None:
        G = into[:, :, : G.shape[1]].copy_(G)
    term(0, G)
    if len(ch.derivs) == 1:
        return
    width = max(lin.out_features for lin in ch.linears[:-1])
    scaled_buf = empty(B * n * width, like=X)
    G_buf = empty(B * n * width, like=X) if into is None else None
    end = G.shape[-1]
    for k in range(1, len(ch.derivs)):
        W = ch.linears[k].weight  # (K_k, K_{k-1})
        K_in, K_out = W.shape[1], W.shape[0]
        scaled = torch.mul(
            G, s1s[k - 1][:, None, :], out=scaled_buf[: B * n * K_in].view(B, n, K_in)
        )
        if into is None:
            out = G_buf[: B * n * K_out].view(B * n, K_out)
        else:  # rows ΣK apart: still one GEMM, written in place
            out = into[:, :, end : end + K_out].view(B * n, K_out)
            end += K_out
        G = torch.mm(scaled.view(B * n, K_in), W.T, out=out).view(B, n, K_out)
        term(k, G)


def hessian(ch: Chain, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    """``(B, m, n, n)``: ``Σ_l (G_l ⊙ c_l) G_lᵀ``, upper panels only (:class:`~.gram.Gram`).

    With panels, every layer's ``G_l`` goes side by side into one ``(B, n, ΣK)`` Jacobian and
    each panel is one GEMM over all layers (1.25× faster than one per layer at n = 64, m = 10).
    """
    s1s, s2s = _values(ch, X)
    cs = _reverse(ch, s1s, s2s, sel)
    B, n = X.shape
    gram = Gram(B, len(sel), n, like=X)
    if not gram.panels:
        _sweep(ch, X, s1s, lambda k, G: gram.add(G, cs[k]))
        return gram.result()
    G_all = empty(B, n, sum(c.shape[-1] for c in cs), like=X)
    _sweep(ch, X, s1s, lambda k, G: None, into=G_all)
    gram.add(G_all, torch.cat(cs, -1))
    return gram.result()


def diagonal(ch: Chain, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    """``(B, m, n)``: ``D_ij = Σ_l Σ_k c_{l,ik} (G_l)_{jk}²``."""
    s1s, s2s = _values(ch, X)
    cs = _reverse(ch, s1s, s2s, sel)
    B, n, m = X.shape[0], X.shape[1], len(sel)
    D = empty(B, m, n, like=X)
    squares = Scratch()

    def term(k, G):
        sq = torch.mul(G, G, out=squares(*G.shape, like=X))
        if k == 0:
            torch.mm(cs[0].view(B * m, -1), sq.T, out=D.view(B * m, n))
        else:
            D.baddbmm_(cs[k], sq.mT)

    _sweep(ch, X, s1s, term)
    return D


def laplacian(ch: Chain, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    """``(B, m)``: ``Σ_l c_l · w_l`` with ``w_l = Σ_j (G_l)_{jk}²`` (``w_1`` shared)."""
    s1s, s2s = _values(ch, X)
    cs = _reverse(ch, s1s, s2s, sel)
    L = torch.zeros(X.shape[0], len(sel), dtype=X.dtype, device=X.device)

    def term(k, G):
        w = torch.linalg.vecdot(G, G, dim=-2)  # (K,) or (B, K): squared column norms
        L.add_(cs[k] @ w if k == 0 else torch.bmm(cs[k], w[:, :, None])[..., 0])

    _sweep(ch, X, s1s, term)
    return L


def hvp(ch: Chain, X: torch.Tensor, V: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    """``(B, m, n)``: ``Σ_l J_lᵀ(c_l ⊙ J_l v)`` from one tangent forward with the values and one
    reverse sweep for all outputs.

    ``c_l ⊙ J_l v = (σ_l'' ⊙ J_l v) ⊙ ∂y/∂a_l``: the per-sample factor ``σ_l'' ⊙ J_l v`` is
    ``(B, K_l)``, formed in the forward pass, so the reverse sweep never forms ``c_l`` itself:
    three ``(B, m, K)`` passes per layer instead of five.
    """
    a, t = X, V
    s1s, s2ts = [], []
    for lin, derivs in zip(ch.linears, ch.derivs):
        a, s1, s2 = derivs(torch.nn.functional.linear(a, lin.weight, lin.bias))
        t = t @ lin.weight.T if not s1s else (t * s1s[-1]) @ lin.weight.T  # J_l v at z_l
        s1s.append(s1)
        s2ts.append(s2 * t)
    d = _output_rows(ch, sel)
    q = None
    for k in range(len(ch.derivs) - 1, -1, -1):
        W = ch.linears[k].weight
        s2t = s2ts[k].unsqueeze(1)
        # q at z_k: the HVP's part from the layers above, carried through σ_k', plus layer k's
        q = s2t * d if q is None else q.mul_(s1s[k].unsqueeze(1)).addcmul_(s2t, d)
        q = torch.matmul(q, W)
        if k > 0:
            d = torch.matmul(s1s[k].unsqueeze(1) * d, W)
    return q
