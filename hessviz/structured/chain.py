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

The Laplacian alone runs forward instead (:func:`laplacian`: each layer's value, Jacobian and
Laplacian stacked under one GEMM, whatever ``m``).

Every kernel takes ``X`` of shape ``(B, n)`` and the selected flat outputs ``sel`` (``m`` of
them) and returns ``(B, m, n, n)`` Hessians, ``(B, m, n)`` diagonals or HVPs, or ``(B, m)``
Laplacians, without autograd. ``ws`` supplies the temporaries (:class:`~hessviz._memory.Workspace`:
a plan's own, kept between its calls, or fresh ones); results are always new tensors.
:func:`run` calls a kernel on cache-sized chunks of a large CPU batch (:func:`chunk_size`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .. import _gemm
from .._memory import FRESH, Workspace, empty
from .._problem import RESULT_AXES
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
        into: per activation, :data:`hessviz.ops.DERIVATIVES_INTO`'s function when the module
            is exactly that op (it then writes into workspace buffers), else None; empty: none.
    """

    linears: tuple
    derivs: tuple[Derivs, ...]
    activations: tuple = ()
    into: tuple = ()


def tensors(ch: Chain) -> list[torch.Tensor]:
    """Every Linear layer's weight and bias (when it has one), as they are now: what a kernel
    compiled from the chain, or written outside PyTorch, reads."""
    return [t for lin in ch.linears for t in weight_and_bias(lin) if t is not None]


def weight_and_bias(lin) -> tuple:
    """``(weight, bias)`` of one of a chain's Linear layers as they are now (bias: None)."""
    # nn.Linear keeps both in _parameters (read there: Module.__getattr__ costs ~0.5 µs a read);
    # a lowered chain's layers may hold them otherwise
    own = getattr(lin, "_parameters", {})
    if "weight" in own and "bias" in own:
        return own["weight"], own["bias"]
    return lin.weight, lin.bias


def narrows(ch: Chain) -> bool:
    """The first layer is narrower than the input (``K_1 < n``): the Laplacian then carries
    ``K_1`` rows (:func:`laplacian`'s ``stem``) instead of ``n``."""
    K1, n = ch.linears[0].weight.shape
    return K1 < n


def _width(ch: Chain) -> int:
    """The widest hidden layer's size (what per-layer buffers are sized for)."""
    return max(lin.weight.shape[0] for lin in ch.linears[: len(ch.derivs)])


def _affine_into(lin, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = a W_kᵀ + b_k``: what ``F.linear`` runs, the same numbers, written into ``out``."""
    if lin.bias is None:
        return _gemm.mm(a, lin.weight.T, out=out)
    return _gemm.addmm(lin.bias, a, lin.weight.T, out=out)


def _activate(ch: Chain, k: int, a: torch.Tensor, ws: Workspace) -> tuple:
    """``(σ(z), σ'(z), σ''(z))`` of activation ``k`` with ``z = W_k a + b_k``, ``(B, K)`` each.

    With a closed form that writes into buffers, ``z`` and the three results live in ``ws``
    (``σ(z)`` in one of two buffers: the next layer reads it while writing its own); otherwise
    the module computes ``σ(z)`` itself, as in ``f``, and its results are new tensors (never
    written here: a closed form may return one tensor twice, as ``exp`` does)."""
    lin = ch.linears[k]
    if not ch.into or ch.into[k] is None:
        return ch.derivs[k](torch.nn.functional.linear(a, lin.weight, lin.bias))
    B, K = a.shape[0], lin.weight.shape[0]  # (not out_features: a replaced weight keeps it)
    z = _affine_into(lin, a, ws("z", B, K, like=a))
    return _derivs(ch, k, z, ws(("a", k % 2), B, K, like=a), ws)


def _derivs(ch: Chain, k: int, z: torch.Tensor, a: torch.Tensor, ws: Workspace) -> tuple:
    """``(σ(z), σ'(z), σ''(z))`` of activation ``k`` at a given ``z`` (``(B, K)``, any strides).

    A closed form writing into buffers puts ``σ(z)`` in ``a`` (which may be ``z`` itself) and
    the derivatives in ``ws``; otherwise all three are the activation's new tensors."""
    into = ch.into[k] if ch.into else None
    if into is None:
        return ch.derivs[k](z)
    B, K = z.shape
    return into(z, a, ws(("s1", k), B, K, like=z), ws(("s2", k), B, K, like=z))


def _values(ch: Chain, X: torch.Tensor, ws: Workspace = FRESH) -> tuple[list, list]:
    """σ_l'(z_l) and σ_l''(z_l), ``(B, K_l)`` each; the output layer's value is never needed."""
    a = X
    s1s, s2s = [], []
    for k in range(len(ch.derivs)):
        a, s1, s2 = _activate(ch, k, a, ws)
        s1s.append(s1)
        s2s.append(s2)
    return s1s, s2s


def _output_rows(ch: Chain, sel: tuple[int, ...]) -> torch.Tensor:
    """``∂y_i/∂a_L`` for the selected outputs, ``(m, K_L)``: rows of the last weight matrix, the
    same for every sample."""
    W_out = ch.linears[-1].weight
    return W_out if sel == tuple(range(W_out.shape[0])) else W_out[list(sel)]


def _reverse(ch: Chain, s1s: list, s2s: list, sel: tuple[int, ...], ws: Workspace = FRESH) -> list:
    """``c_l`` for every activation (``(B, m, K_l)``) from one reverse sweep for all outputs."""
    d = _output_rows(ch, sel)  # (m, K_L), then (B, m, K_l)
    B, m = s1s[0].shape[0], d.shape[0]
    cs = [None] * len(ch.derivs)
    for k in range(len(ch.derivs) - 1, -1, -1):
        K = s1s[k].shape[1]
        cs[k] = torch.mul(s2s[k][:, None, :], d, out=ws(("c", k), B, m, K, like=d))
        if k > 0:
            W = ch.linears[k].weight
            s1d = torch.mul(s1s[k][:, None, :], d, out=ws("s1d", B, m, K, like=d))
            out = ws(("d", k % 2), B * m, W.shape[1], like=d)
            d = _gemm.mm(s1d.view(B * m, K), W, out=out).view(B, m, -1)
    return cs


def _sweep(
    ch: Chain, X: torch.Tensor, s1s: list, term: Callable, into=None, ws: Workspace = FRESH
) -> None:
    """Carry ``G_l = J_lᵀ`` through the chain and hand each to ``term(l, G_l)``.

    ``G_1 = W_1ᵀ`` is ``(n, K_1)``; the later ones are ``(B, n, K_l)``, valid only during the
    call (two buffers serve every layer: the scaled Jacobian and the next one). With ``into``,
    a ``(B, n, ΣK_l)`` buffer, every ``G_l`` is written side by side there instead and kept.
    """
    B, n = X.shape
    W1 = ch.linears[0].weight
    # contiguous: products with a transposed view would inherit its memory order
    G = (ws("G1", n, W1.shape[0], like=X) if into is None else into[:, :, : W1.shape[0]]).copy_(
        W1.T
    )
    term(0, G)
    if len(ch.derivs) == 1:
        return
    width = _width(ch)
    scaled_buf = ws("scaled", B * n * width, like=X)
    G_buf = ws("G", B * n * width, like=X) if into is None else None
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
        G = _gemm.mm(scaled.view(B * n, K_in), W.T, out=out).view(B, n, K_out)
        term(k, G)


def hessian(ch: Chain, X: torch.Tensor, sel: tuple[int, ...], ws: Workspace = FRESH, out=None):
    """``(B, m, n, n)``: ``Σ_l (G_l ⊙ c_l) G_lᵀ``, upper panels only (:class:`~.gram.Gram`),
    into ``out`` when given (as every kernel here: a contiguous view of the result's shape).

    With panels, every layer's ``G_l`` goes side by side into one ``(B, n, ΣK)`` Jacobian and
    each panel is one GEMM over all layers (1.25× faster than one per layer at n = 64, m = 10).
    """
    s1s, s2s = _values(ch, X, ws)
    cs = _reverse(ch, s1s, s2s, sel, ws)
    B, n, m = X.shape[0], X.shape[1], len(sel)
    gram = Gram(B, m, n, like=X, ws=ws, out=out)
    if not gram.panels:
        _sweep(ch, X, s1s, lambda k, G: gram.add(G, cs[k]), ws=ws)
        return gram.result()
    K_all = sum(c.shape[-1] for c in cs)
    G_all = ws("G_all", B, n, K_all, like=X)
    _sweep(ch, X, s1s, lambda k, G: None, into=G_all, ws=ws)
    gram.add(G_all, torch.cat(cs, -1, out=ws("c_all", B, m, K_all, like=X)))
    return gram.result()


def diagonal(ch: Chain, X: torch.Tensor, sel: tuple[int, ...], ws: Workspace = FRESH, out=None):
    """``(B, m, n)``: ``D_ij = Σ_l Σ_k c_{l,ik} (G_l)_{jk}²``."""
    s1s, s2s = _values(ch, X, ws)
    cs = _reverse(ch, s1s, s2s, sel, ws)
    B, n, m = X.shape[0], X.shape[1], len(sel)
    D = empty(B, m, n, like=X) if out is None else out
    squares = _flat(ws, "squares", B * n * max(c.shape[-1] for c in cs), X)

    def term(k, G):
        sq = torch.mul(G, G, out=squares(G.shape))
        if k == 0:
            _gemm.mm(cs[0].view(B * m, -1), sq.T, out=D.view(B * m, n))
        else:
            D.baddbmm_(cs[k], sq.mT)

    _sweep(ch, X, s1s, term, ws=ws)
    return D


#: inputs up to which the Laplacian's Jacobian rows are squared and summed one row at a time,
#: ``n − 1`` in-place ``(B, K)`` products, rather than one product and a reduction over ``n``
#: (PINN tanh chains, width 64, batch 1024, one core: 1.1-1.2× faster at n = 10 and 32,
#: level at n = 100)
ROW_BY_ROW = 32


def laplacian(
    ch: Chain,
    X: torch.Tensor,
    sel: tuple[int, ...],
    ws: Workspace = FRESH,
    out=None,
    stem: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """``(B, m)``, by the forward Laplacian: each layer's value ``a``, Jacobian ``J = ∂a/∂x``
    and Laplacian ``Δa`` travel together, stacked as ``(n + 2, B, K)``, so one GEMM per layer
    maps all three (``n + 2`` rows per sample whatever ``m``; the outputs' Laplacians are
    ``W_out Δa_L`` at the end). Through ``a = σ(z)``:

        ``J_a = σ'(z) ⊙ J_z``,  ``Δa = σ'(z) ⊙ Δz + σ''(z) ⊙ Σ_j (J_z)_j²``.

    The first layer's ``J_z = W_1`` is the same for every sample and ``Δz_1 = 0``. The stack
    is ordered (row kind, sample), not (sample, row kind) — the GEMM does not care which — so
    that ``z``, each ``J_j`` and ``Δz`` are contiguous ``(B, K)`` blocks: elementwise work on
    them runs as one loop, not ``B`` loops of ``K`` (1.1-1.25× faster calls at PINN d ≤ 10).

    ``stem``: ``(rows, norms)``, ``rows`` ``(r, K_1)`` with ``rowsᵀ rows = W_1 W_1ᵀ``, carried
    in place of the ``n`` rows of ``W_1ᵀ``, and ``norms = Σ_j W_1[:, j]²`` ``(K_1,)`` (None:
    ``W_1ᵀ`` and its norms, made here). Every term above is a sum over the rows of products of
    two rows, ``Σ_j (J_z)_j (J_z)_jᵀ = A W_1 W_1ᵀ Aᵀ`` for the linear map ``A`` from ``z_1`` on,
    so any such rows give the same Laplacian: a first layer narrower than its input
    (``K_1 < n``) carries ``r = K_1`` rows instead of ``n``
    (:func:`hessviz.structured.kernels.laplacian_stem`).
    """
    B, n = X.shape
    hidden = ch.linears[: len(ch.derivs)]
    width = _width(ch)
    W1 = hidden[0].weight  # (K_1, n)
    K = W1.shape[0]
    r = n if stem is None else stem[0].shape[0]
    stacks = [_flat(ws, ("stack", i), (r + 2) * B * width, X) for i in (0, 1)]
    Y = stacks[0]((r + 2, B, K))
    z = _affine_into(hidden[0], X, Y[0])
    a, s1, s2 = _derivs(ch, 0, z, z, ws)
    first = torch.linalg.vecdot(W1, W1) if stem is None else stem[1]  # Σ_j W1[:, j]²
    lap = torch.mul(s2, first, out=Y[r + 1])
    if len(hidden) > 1:
        if stem is None:
            # W1ᵀ copied contiguous first: broadcast against a transposed view, the product
            # runs element by element (n = 64, width 128, 16 samples: 158 against ~40 µs here)
            rows = ws("W1_T", n, K, like=X).copy_(W1.T)
        else:
            rows = stem[0]
        torch.mul(s1[None], rows[:, None, :], out=Y[1 : r + 1])
        if a is not z:
            z.copy_(a)
    squares = _flat(ws, "squares", r * B * width, X)
    norms = _flat(ws, "norms", B * width, X)
    for k in range(1, len(hidden)):
        lin = hidden[k]
        K, K_in = lin.weight.shape
        Z = stacks[k % 2](((r + 2) * B, K))
        Y = _gemm.mm(Y.view((r + 2) * B, K_in), lin.weight.T, out=Z).view(r + 2, B, K)
        z, J, lap = Y[0], Y[1 : r + 1], Y[r + 1]
        if lin.bias is not None:
            z.add_(lin.bias)
        if r <= ROW_BY_ROW:  # a PINN's few input directions: (B, K) products in place
            w = torch.mul(J[0], J[0], out=norms((B, K)))  # (B, K): Σ_j (J_z)_j²
            for j in range(1, r):
                w.addcmul_(J[j], J[j])
        else:
            w = _sum_of_squares(J, norms((B, K)), squares)
        a, s1, s2 = _derivs(ch, k, z, z, ws)
        lap.mul_(s1).addcmul_(s2, w)
        if k < len(hidden) - 1:  # the last layer's value and Jacobian are never read
            J.mul_(s1)
            if a is not z:
                z.copy_(a)
    return _gemm.mm(lap, _output_rows(ch, sel).T, out=out)


def _sum_of_squares(J: torch.Tensor, out: torch.Tensor, scratch: Callable) -> torch.Tensor:
    """``Σ_j J_j²`` over the first axis of ``J`` ``(r, B, K)``, written into ``out`` ``(B, K)``;
    returns ``out``. numpy's ``einsum`` reads ``J`` once, no temporary, for plain CPU float
    tensors outside tracing with at most two torch threads (one core here, float64:
    80 against 136 µs at ``(128, 8, 128)``, 0.88 against 2.1 ms at ``(64, 256, 64)``; float32
    1.25–2.7×); else squares into ``scratch((r, B, K))`` and a sum. Rows are summed in
    another order than torch's: the results differ by rounding only."""
    if (
        not torch.compiler.is_compiling()
        and type(J) is torch.Tensor
        and type(out) is torch.Tensor
        and J.is_cpu
        and J.dtype in _gemm.NUMPY_DTYPES
        and out.dtype == J.dtype
        and not (J.requires_grad or out.requires_grad)
        and torch.get_num_threads() <= 2
    ):
        a = J.numpy()
        np.einsum("jbk,jbk->bk", a, a, out=out.numpy())
        return out
    return torch.sum(torch.mul(J, J, out=scratch(J.shape)), dim=0, out=out)


def laplacian_traced(ch: Chain, X: torch.Tensor, sel: tuple[int, ...]):
    """:func:`laplacian` written for a compiler (see :func:`hvp_traced`): the same forward
    Laplacian and numbers, each layer's value, Jacobian and Laplacian concatenated under one
    GEMM (the compiler writes the concatenation from the loops that compute its parts), no
    buffers, no writes into views. Compiled ahead of time here it took 0.44× the time of
    :func:`laplacian` compiled (PINN d = 2, width 64, 4 layers, batch 1024, float64), 0.6–0.8×
    elsewhere."""
    B, n = X.shape
    hidden = ch.linears[: len(ch.derivs)]
    W1 = hidden[0].weight  # (K_1, n)
    z = X @ W1.T
    if hidden[0].bias is not None:
        z = z + hidden[0].bias
    a, s1, s2 = ch.derivs[0](z)
    lap = s2 * (W1 * W1).sum(1)  # Σ_j W1[:, j]²
    J = s1[:, None, :] * W1.T  # (B, n, K_1)
    for k in range(1, len(hidden)):
        lin = hidden[k]
        stacked = torch.cat([a[:, None, :], J, lap[:, None, :]], 1)  # (B, n + 2, K_in)
        Y = (stacked.reshape(B * (n + 2), -1) @ lin.weight.T).view(B, n + 2, -1)
        z, J, lap = Y[:, 0], Y[:, 1 : n + 1], Y[:, n + 1]
        if lin.bias is not None:
            z = z + lin.bias
        a, s1, s2 = ch.derivs[k](z)
        lap = s1 * lap + s2 * (J * J).sum(1)
        J = J * s1[:, None, :]
    return lap @ _output_rows(ch, sel).T


def hvp(
    ch: Chain,
    X: torch.Tensor,
    V: torch.Tensor,
    sel: tuple[int, ...],
    ws: Workspace = FRESH,
    out=None,
):
    """``(B, m, n)``: ``Σ_l J_lᵀ(c_l ⊙ J_l v)`` from one tangent forward with the values and one
    reverse sweep for all outputs.

    ``c_l ⊙ J_l v = (σ_l'' ⊙ J_l v) ⊙ ∂y/∂a_l``: the per-sample factor ``σ_l'' ⊙ J_l v`` is
    ``(B, K_l)``, formed in the forward pass, so the reverse sweep never forms ``c_l`` itself:
    three ``(B, m, K)`` passes per layer instead of five.
    """
    B = X.shape[0]
    a, t = X, V
    s1s, s2ts = [], []
    for k, lin in enumerate(ch.linears[: len(ch.derivs)]):
        a, s1, s2 = _activate(ch, k, a, ws)
        K = lin.weight.shape[0]
        if s1s:  # J_l v at z_l
            t = torch.mul(t, s1s[-1], out=ws(("ts1", k), *t.shape, like=X))
        t = _gemm.mm(t, lin.weight.T, out=ws(("t", k % 2), B, K, like=X))
        s1s.append(s1)
        s2ts.append(torch.mul(s2, t, out=ws(("s2t", k), B, K, like=X)))
    d = _output_rows(ch, sel)  # (m, K_L), then (B, m, K_l)
    m = d.shape[0]
    q = None
    for k in range(len(ch.derivs) - 1, -1, -1):
        W = ch.linears[k].weight
        K = W.shape[0]
        s2t = s2ts[k].unsqueeze(1)
        # q at z_k: the HVP's part from the layers above, carried through σ_k', plus layer k's
        if q is None:
            q = torch.mul(s2t, d, out=ws("q", B, m, K, like=X))
        else:
            q.mul_(s1s[k].unsqueeze(1)).addcmul_(s2t, d)
        if k > 0:
            into = ws(("qW", k % 2), B * m, W.shape[1], like=X)
        else:  # the last product is the result
            into = None if out is None else out.view(B * m, W.shape[1])
        q = _gemm.mm(q.view(B * m, K), W, out=into).view(B, m, -1)
        if k > 0:
            s1d = torch.mul(s1s[k].unsqueeze(1), d, out=ws("s1d", B, m, K, like=X))
            into = ws(("d", k % 2), B * m, W.shape[1], like=X)
            d = _gemm.mm(s1d.view(B * m, K), W, out=into).view(B, m, -1)
    return q


def hvp_traced(ch: Chain, X: torch.Tensor, V: torch.Tensor, sel: tuple[int, ...]):
    """:func:`hvp` written for a compiler (``torch.export`` with AOTInductor, ``torch.compile``):
    the same sweep and numbers, without buffers or writes into views (functionalisation turns
    each such write into copies), with the value and the tangent stacked as ``(2B, K)`` in
    the forward and ``q`` and ``d`` as ``(2Bm, K)`` in the reverse sweep, so one GEMM per layer
    maps both; the compiler writes each concatenation from the loop that computes it.
    Compiled ahead of time here: 0.83× :func:`hvp`'s time at n = 2 (width 16, batch 64) and
    0.90× at n = 10 (width 64)."""
    B = X.shape[0]
    A = torch.cat([X, V])  # (2B, n): the value above the tangent
    last = len(ch.derivs) - 1
    s1s, s2ts = [], []
    for k, lin in enumerate(ch.linears[: last + 1]):
        Z = A @ lin.weight.T
        z, t = Z[:B], Z[B:]  # z_k and J_k v
        if lin.bias is not None:
            z = z + lin.bias
        a, s1, s2 = ch.derivs[k](z)
        s1s.append(s1)
        s2ts.append(s2 * t)
        if k < last:
            A = torch.cat([a, t * s1])
    d = _output_rows(ch, sel)  # (m, K_L), then (B, m, K_l)
    m = d.shape[0]
    q = None
    for k in range(last, -1, -1):
        W = ch.linears[k].weight
        s1, s2t = s1s[k].unsqueeze(1), s2ts[k].unsqueeze(1)
        q = s2t * d if q is None else q * s1 + s2t * d
        if k == 0:
            return (q.reshape(B * m, -1) @ W).view(B, m, -1)
        QD = torch.cat([q, s1 * d]).reshape(2 * B * m, -1) @ W
        q, d = QD[: B * m].view(B, m, -1), QD[B * m :].view(B, m, -1)
    raise ValueError("a chain has at least one activation")


def _flat(ws: Workspace, role: str, size: int, like: torch.Tensor) -> Callable:
    """``shape ↦`` a view of one ``size``-element buffer of ``ws``: temporaries of one role
    whose shapes change from layer to layer share it."""
    buf = ws(role, size, like=like)
    return lambda shape: buf[: math.prod(shape)].view(shape)


#: Bytes of one chunk's largest per-layer tensors on the CPU (:func:`chunk_size`)
CHUNK_BYTES = 3 << 19


def chunk_size(op: str, ch: Chain, X: torch.Tensor, m: int, r: int | None = None) -> int:
    """Samples per chunk for kernel ``op`` on ``X`` (``(B, n)``) with ``m`` selected outputs
    (``r``: the Laplacian's first-layer rows, :func:`laplacian`'s ``stem``; default ``n``).

    On the CPU the batch runs in chunks whose largest per-layer tensors (per sample: the
    Laplacian's ``r + 2`` stacked rows, the diagonal's and Hessian's ``n``-row Jacobian, the
    HVP's ``~3m + 5`` rows, times the widest layer) take about :data:`CHUNK_BYTES`, so each
    layer's GEMM reads and writes cache-resident data. Measured here (one core): MKL's float64
    ``(M, 64) @ (64, 64)`` runs at 39 GFLOP/s up to M = 4096 and at 21-25 beyond 12 k rows, and
    every kernel at batch 1024-4096 ran 1.1-1.7× faster in chunks of this size than whole.
    Smaller dtypes lose less to size (float32 ran 5-10% slower in such chunks) and get four
    times the bytes. On a GPU: one chunk.
    """
    B, n = X.shape
    if not X.is_cpu:
        return B
    width = _width(ch)
    r = n if r is None else r
    rows = {"laplacian": r + 2, "hessian": n, "diagonal": n, "hvp": 3 * m + 5}[op]
    budget = CHUNK_BYTES if X.element_size() >= 8 else 4 * CHUNK_BYTES
    chunks = -(-B * rows * width * X.element_size() // budget)
    return -(-B // max(chunks, 1))


def run(
    op: str,
    ch: Chain,
    X: torch.Tensor,
    *args,
    ws: Workspace = FRESH,
    step: int | None = None,
    stem: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Kernel ``op`` (``hessian``, ``diagonal``, ``laplacian``, ``hvp``; ``args``: ``sel`` or
    ``V, sel``) on chunks of ``step`` samples (default: :func:`chunk_size`'s), one chunk when
    the batch fits; the results gathered in one new tensor. ``stem``: the Laplacian's
    first-layer rows and norms (:func:`laplacian`), None for every other op."""
    kernel = globals()[op]
    if stem is not None:
        kernel = functools.partial(kernel, stem=stem)
    *V, sel = args
    B = X.shape[0]
    if step is None:
        step = chunk_size(op, ch, X, len(sel), None if stem is None else stem[0].shape[0])
    if step >= B:
        return kernel(ch, X, *args, ws=ws)
    n, m = X.shape[1], len(sel)
    out = empty(B, m, *(n,) * RESULT_AXES[op], like=X)
    for start in range(0, B, step):  # each chunk's kernel writes its rows of the result
        part = slice(start, start + step)
        kernel(ch, X[part], *(v[part] for v in V), sel, ws=ws, out=out[part])
    return out
