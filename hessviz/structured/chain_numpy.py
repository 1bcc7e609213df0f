r"""The chain HVP, Laplacian, diagonal and Hessian kernels written in numpy: what plain calls
run where they win.

:func:`hessviz.structured.chain.hvp` is ~45 small tensor operations around its GEMMs; on a
small MLP each PyTorch CPU operation costs a few microseconds of dispatch, and compiling them
(AOTInductor) still leaves the GEMMs to torch's BLAS. The same sweep in numpy costs about a
microsecond per operation, runs each product on whichever BLAS is the faster for its class
(:func:`hessviz._gemm.matmul`: torch's or numpy's, on views of the same memory) and its
activations in numpy's vectorised ``tanh``/``sin``/``exp`` (:data:`hessviz.ops.NUMPY_DERIVATIVES`).

:class:`Plan` (HVPs): the same mathematics and notation as
:func:`~hessviz.structured.chain.hvp`, laid out for fewer and larger operations: the forward
pass pushes the values and the tangent through one product per layer (``[x; v] W_1ᵀ``, then
``[a; s1 ⊙ t] W_kᵀ``, ``(2B, K)`` rows), and the reverse sweep carries the gradient adjoint
``g`` and the HVP adjoint ``r`` of all ``m`` outputs through one product per layer
(``[r; g] W_k``, ``(2Bm, K)`` rows).
:class:`LaplacianPlan`: :func:`~hessviz.structured.chain.laplacian`'s forward Laplacian, the
same ``(n + 2, B, K)`` stack; :class:`DiagonalPlan` and :class:`HessianPlan`: the reverse
sweep and Jacobians of :func:`~hessviz.structured.chain.diagonal` and
:func:`~hessviz.structured.chain.hessian`. A plan keeps its buffers between calls, so a repeated
call allocates only its result.

They run for chains whose activations are all exactly ``tanh``, ``sigmoid`` or ``sin`` on CPU
float32/float64 inputs (:func:`supports`), only after their result equalled the PyTorch
kernel's to round-off on the data at hand: in a plain :func:`hessviz.hvp`,
:func:`hessviz.laplacian`, :func:`hessviz.hessian_diagonal` or :func:`hessviz.hessian` from the
second call on (:func:`proved`), where numpy's BLAS measured faster than torch's for the dtype
(HVPs, :func:`hessviz._gemm.numpy_is_faster`) or where the whole kernel won a short race
against PyTorch's on the first call's data (:func:`_wins_race`); and the HVP plan in
:func:`hessviz.compile` where it wins the race there.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import _gemm, ops
from .._gemm import NUMPY_DTYPES, array
from .._selfcheck import agrees
from .chain import Chain, narrows, tensors
from .kernels import ChainRunner
from .layers import derivatives_into


def supports(ch: Chain, X: torch.Tensor) -> bool:
    """Whether :func:`hvp` runs ``ch`` on inputs like ``X`` (``(B, n)``)."""
    return (
        X.device.type == "cpu"
        and X.dtype in NUMPY_DTYPES
        and len(ch.activations) == len(ch.derivs)
        and all(derivatives_into(m, ops.NUMPY_DERIVATIVES) for m in ch.activations)
        and all(
            t is None or (t.device.type == "cpu" and t.dtype == X.dtype)
            for lin in ch.linears
            for t in (lin.weight, lin.bias)
        )
    )


def arrays(ch: Chain) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Every Linear layer's ``(weight, bias)`` as numpy views of the same memory (no copies:
    in-place updates of the parameters show through)."""
    return [
        (array(lin.weight), None if lin.bias is None else array(lin.bias)) for lin in ch.linears
    ]


def _blocks(buf: np.ndarray, *shape: int) -> np.ndarray:
    """The first ``prod(shape)`` numbers of a flat buffer as an array of ``shape``."""
    return buf[: math.prod(shape)].reshape(shape)


class _NumpyPlan:
    """What the numpy plans (:class:`Plan`, :class:`LaplacianPlan`, :class:`DiagonalPlan`,
    :class:`HessianPlan`) share: the chain's sizes for ``B`` samples in ``dtype`` and the
    outputs ``sel``, buffers (:meth:`_buffers`) kept between calls, one call at a time (a
    concurrent call gets a plan of its own for that call). The whole batch runs in one piece."""

    def __init__(self, ch: Chain, B: int, dtype: torch.dtype, sel: tuple[int, ...]):
        self.chain, self.B, self.dtype, self.sel = ch, B, dtype, tuple(sel)
        self.shapes = tuple(t.shape for t in tensors(ch))  # the weights' and biases' it sized for
        self.fns = [derivatives_into(m, ops.NUMPY_DERIVATIVES) for m in ch.activations]
        self.n = ch.linears[0].weight.shape[1]
        self.widths = [lin.weight.shape[0] for lin in ch.linears[: len(self.fns)]]
        self.np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        self._buffers(B, self.n, len(self.sel), max(self.widths))
        self.lock = threading.Lock()

    def _buffers(self, B: int, n: int, m: int, K: int) -> None:
        raise NotImplementedError

    def _run(self, *arrays_and_layers) -> np.ndarray | None:
        raise NotImplementedError

    def __call__(self, *inputs: torch.Tensor, layers: list | None = None) -> torch.Tensor | None:
        """The result at ``inputs`` (``X``, and an HVP's ``V``: ``(B, n)`` contiguous tensors of
        the plan's dtype); ``layers``: :func:`arrays` of the chain (made here when not given).
        A new tensor (None where a subclass's sweep found a non-finite input)."""
        return self.on_arrays(*(t.numpy() for t in inputs), layers=layers or arrays(self.chain))

    def on_arrays(self, *inputs: np.ndarray, layers: list) -> torch.Tensor | None:
        """:meth:`__call__` on numpy views of the inputs (``(B, n)`` C-contiguous arrays of the
        plan's dtype) and :func:`arrays` of the chain."""
        if not self.lock.acquire(False):  # (not blocking; positional: a keyword costs more)
            return type(self)(self.chain, self.B, self.dtype, self.sel).on_arrays(
                *inputs, layers=layers
            )
        try:
            R = self._run(*inputs, layers)
            return None if R is None else torch.from_numpy(R)
        finally:
            self.lock.release()

    def _output_rows(self, layers: list) -> np.ndarray:
        """``∂y_i/∂a_L`` of the selected outputs, ``(m, K_L)``."""
        rows = layers[len(self.fns)][0]
        return rows if self.sel == tuple(range(rows.shape[0])) else rows[list(self.sel)]


class Plan(_NumpyPlan):
    """:func:`hvp` of ``ch`` for ``B`` samples in ``dtype`` and the outputs ``sel``, called as
    ``plan(X, V, layers=…)``: ``(B, m, n)``, ``Σ_l J_lᵀ(c_l ⊙ J_l v)``, with its buffers
    (~``5 B m K`` numbers for the widest hidden layer ``K``) kept between calls."""

    def _buffers(self, B: int, n: int, m: int, K: int) -> None:
        widths, np_dtype = self.widths, self.np_dtype
        # forward, per activation layer: [z → a; t → s1 ⊙ t], σ', σ'' → σ'' ⊙ t
        self.forward = [np.empty((2, B, k), np_dtype) for k in widths]
        # [x; v] for one first-layer product where W_1 outweighs the copy (K_1 > 2B: at B = 2,
        # n = 784 two products took 1.6× one's time; at B = 64, width 16 the copy costs more)
        self.xv = np.empty((2, B, n), np_dtype) if widths[0] > 2 * B else None
        self.s1 = [np.empty((B, k), np_dtype) for k in widths]
        self.s2t = [np.empty((B, k), np_dtype) for k in widths]
        # reverse: [r; g] of two neighbouring layers (ping-pong), and σ'' ⊙ t ⊙ d
        self.sweep = [np.empty(2 * B * m * K, np_dtype) for _ in range(2)]
        self.scratch = np.empty(B * m * K, np_dtype)

    def _run(self, x: np.ndarray, v: np.ndarray, layers: list) -> np.ndarray:
        B, L = self.B, len(self.fns)
        s1s, s2ts = self.s1, self.s2t
        # forward: F_k = [z_k; t_k], then in place [a_k; s1_k ⊙ t_k] (the next layer's rows)
        F = self.xv
        if F is not None:
            F[0] = x
            F[1] = v
        for k in range(L):
            W, b = layers[k]
            F_in, F = F, self.forward[k]
            if F_in is None:
                _gemm.matmul(x, W.T, out=F[0])
                _gemm.matmul(v, W.T, out=F[1])
            else:
                _gemm.matmul(F_in.reshape(2 * B, -1), W.T, out=F.reshape(2 * B, -1))
            if b is not None:
                F[0] += b
            self.fns[k](F[0], s1s[k], s2ts[k])  # a_k into F[0], σ' and σ''
            s2ts[k] *= F[1]  # c-ready: σ''_k ⊙ t_k
            if k + 1 < L:
                F[1] *= s1s[k]  # the tangent at a_k
        # reverse: Q = [r_k; g_k] (m, B, K_k): HVP and gradient adjoints at z_k, outputs first
        # so that σ' and σ''t (B, K) broadcast over whole contiguous (B, K) blocks
        d = self._output_rows(layers)  # (m, K): the same for every sample
        m = d.shape[0]
        Q = self._slab(0, L - 1)
        d = d[:, None, :]
        np.multiply(d, s2ts[L - 1], out=Q[0])
        if L > 1:
            np.multiply(d, s1s[L - 1], out=Q[1])
        for k in range(L - 1, 0, -1):
            W = layers[k][0]  # (K_k, K_{k-1})
            K_in = self.widths[k - 1]
            P = self._slab((L - k) % 2, k - 1)  # [r W_k; g W_k] = [p; d_{k-1}]
            _gemm.matmul(Q.reshape(2 * m * B, -1), W, out=P.reshape(2 * m * B, K_in))
            s1, s2t_d = s1s[k - 1], self.scratch[: m * B * K_in].reshape(m, B, K_in)
            np.multiply(P[1], s2ts[k - 1], out=s2t_d)
            P[0] *= s1
            P[0] += s2t_d  # r_{k-1} = s1 ⊙ p + σ''t ⊙ d
            if k > 1:
                P[1] *= s1  # g_{k-1} = s1 ⊙ d
            Q = P
        W1, n = layers[0][0], self.n
        if m * B * W1.size < _gemm.HANDOFF:  # small: m products straight into (B, m, n)
            R = np.empty((B, m, n), Q.dtype)
            np.matmul(Q[0], W1, out=R.transpose(1, 0, 2))  # (2.6 µs at n = 2, width 16)
            return R
        # (m·B, n) rows in one product, then (B, m, n): numpy's matmul into a transposed
        # ``out`` over a stack of m products took 1.7-2.8× the time of both together here
        R = _gemm.matmul(Q[0].reshape(m * B, -1), W1).reshape(m, B, n).transpose(1, 0, 2)
        return np.ascontiguousarray(R)

    def _slab(self, which: int, k: int) -> np.ndarray:
        """``[r; g]`` at layer ``k``: ``(2, m, B, K_k)`` in ping-pong buffer ``which``."""
        B, m, K = self.B, len(self.sel), self.widths[k]
        return self.sweep[which][: 2 * B * m * K].reshape(2, m, B, K)


def hvp(
    ch: Chain, X: torch.Tensor, V: torch.Tensor, sel: tuple[int, ...], layers: list | None = None
) -> torch.Tensor:
    """``(B, m, n)``: ``Σ_l J_lᵀ(c_l ⊙ J_l v)``, as :func:`~hessviz.structured.chain.hvp`
    computes it. ``X``, ``V``: ``(B, n)`` contiguous CPU tensors that :func:`supports` accepts;
    ``layers``: :func:`arrays` of ``ch``. One call: a :class:`Plan` keeps its buffers."""
    return Plan(ch, X.shape[0], X.dtype, sel)(X, V, layers=layers)


class LaplacianPlan(_NumpyPlan):
    """The forward Laplacian of :func:`hessviz.structured.chain.laplacian` in numpy, ``(B, m)``:
    the same mathematics and layout — each layer's value, Jacobian and Laplacian stacked as
    ``(n + 2, B, K)`` under one product per layer, every elementwise pass over contiguous
    ``(B, K)`` blocks — with two such stacks and a few ``(B, K)`` blocks kept."""

    def _buffers(self, B: int, n: int, m: int, K: int) -> None:
        self.stacks = [np.empty((n + 2) * B * K, self.np_dtype) for _ in range(2)]
        self.s1, self.s2, self.w = (np.empty(B * K, self.np_dtype) for _ in range(3))

    def _run(self, x: np.ndarray, layers: list) -> np.ndarray:
        B, n = x.shape
        L = len(self.fns)
        W, b = layers[0]  # (K_1, n)
        K = W.shape[0]
        Y = _blocks(self.stacks[0], n + 2, B, K)
        _gemm.matmul(x, W.T, out=Y[0])
        if b is not None:
            Y[0] += b
        s1, s2 = _blocks(self.s1, B, K), _blocks(self.s2, B, K)
        self.fns[0](Y[0], s1, s2)  # σ(z) into z
        np.multiply(s2, np.einsum("kj,kj->k", W, W), out=Y[n + 1])  # Σ_j W1[:, j]²
        if L > 1:
            # (Wᵀ copied first: the product then reads it in order, 1.4× faster at n = 64)
            np.multiply(s1, np.ascontiguousarray(W.T)[:, None, :], out=Y[1 : n + 1])
        for k in range(1, L):
            W, b = layers[k]
            K = W.shape[0]
            Z = _blocks(self.stacks[k % 2], n + 2, B, K)
            _gemm.matmul(Y.reshape((n + 2) * B, -1), W.T, out=Z.reshape((n + 2) * B, K))
            z, J, lap = Z[0], Z[1 : n + 1], Z[n + 1]
            if b is not None:
                z += b
            w = _blocks(self.w, B, K)
            np.einsum("jbk,jbk->bk", J, J, out=w)  # Σ_j J_j² (one pass: 2× square-then-sum)
            s1, s2 = _blocks(self.s1, B, K), _blocks(self.s2, B, K)
            self.fns[k](z, s1, s2)
            lap *= s1
            w *= s2
            lap += w  # Δa = σ' ⊙ Δz + σ'' ⊙ Σ_j J_j²
            if k < L - 1:  # the last layer's value and Jacobian are never read
                J *= s1
            Y = Z
        return Y[n + 1] @ self._output_rows(layers).T


class DiagonalPlan(_NumpyPlan):
    """The exact diagonal of :func:`hessviz.structured.chain.diagonal` in numpy, ``(B, m, n)``:
    ``D_ij = Σ_l Σ_k c_{l,ik} (G_l)_{jk}²`` — one reverse sweep for ``c_l = σ_l'' ⊙ ∂y/∂a_l``
    of all outputs (``(B, m, K_l)``), then the Jacobians ``G_l = (G_{l-1} ⊙ σ'_{l-1}) W_lᵀ``
    (``(B, n, K_l)``, ``G_1 = W_1ᵀ`` for every sample), each layer's term one batched product
    of ``c_l`` with ``G_l ⊙ G_l``."""

    def _buffers(self, B: int, n: int, m: int, K: int) -> None:
        e = self.np_dtype
        self.z = [np.empty((B, k), e) for k in self.widths]  # σ(z), written over z
        self.s1 = [np.empty((B, k), e) for k in self.widths]
        self.s2 = [np.empty((B, k), e) for k in self.widths]
        self.c = [np.empty((B, m, k), e) for k in self.widths]
        self.adjoints = [np.empty(B * m * K, e) for _ in range(2)]  # ∂y/∂a_l, ping-pong
        self.jacobians = [np.empty(B * n * K, e) for _ in range(2)]  # G_l, ping-pong
        self.scaled = np.empty(B * max(m, n) * K, e)  # σ' ⊙ (an adjoint or a Jacobian)
        self.term = np.empty((B, m, n), e)

    def _run(self, x: np.ndarray, layers: list) -> np.ndarray:
        B, n = x.shape
        m = len(self.sel)
        self._sweep(x, layers)
        W1 = layers[0][0]  # (K_1, n): G_1 = W_1ᵀ for every sample
        D = np.empty((B, m, n), self.np_dtype)
        _gemm.matmul(self.c[0].reshape(B * m, -1), np.square(W1), out=D.reshape(B * m, n))
        for k, G in self._jacobians(layers):
            squares = _blocks(self.scaled, B, n, self.widths[k])  # (the scaled copy is spent)
            np.square(G, out=squares)
            D += np.matmul(self.c[k], squares.transpose(0, 2, 1), out=self.term)
        return D

    def _sweep(self, x: np.ndarray, layers: list) -> None:
        """σ' and σ'' of every layer at ``x``, then ``c_l`` (``self.c``) from one reverse sweep
        of the selected outputs' adjoints."""
        B, m, L, widths = x.shape[0], len(self.sel), len(self.fns), self.widths
        a = x
        for k in range(L):  # values: σ', σ''
            W, b = layers[k]
            _gemm.matmul(a, W.T, out=self.z[k])
            if b is not None:
                self.z[k] += b
            self.fns[k](self.z[k], self.s1[k], self.s2[k])
            a = self.z[k]
        d = self._output_rows(layers)  # (m, K_L), then (B, m, K_l)
        for k in range(L - 1, -1, -1):  # reverse: c_l, and the adjoint one layer down
            np.multiply(self.s2[k][:, None, :], d, out=self.c[k])
            if k > 0:
                s1d = _blocks(self.scaled, B, m, widths[k])
                np.multiply(self.s1[k][:, None, :], d, out=s1d)
                d = _blocks(self.adjoints[k % 2], B, m, widths[k - 1])
                _gemm.matmul(s1d.reshape(B * m, -1), layers[k][0], out=d.reshape(B * m, -1))

    def _jacobians(self, layers: list):
        """``(l, G_l)`` for the layers after the first: ``G_l`` ``(B, n, K_l)``, valid until
        the next one (two buffers serve them all)."""
        B, n, widths = self.B, self.n, self.widths
        G = layers[0][0].T[None]  # G_1 = W_1ᵀ, (1, n, K_1)
        for k in range(1, len(self.fns)):
            scaled = _blocks(self.scaled, B, n, widths[k - 1])
            np.multiply(G, self.s1[k - 1][:, None, :], out=scaled)
            G = _blocks(self.jacobians[k % 2], B, n, widths[k])
            _gemm.matmul(scaled.reshape(B * n, -1), layers[k][0].T, out=G.reshape(B * n, -1))
            yield k, G


def pair_products_pay(n: int, m: int) -> bool:
    """Whether :class:`HessianPlan` forms each term from products of Jacobian row pairs
    (``n(n + 1)/2`` per sample and unit, shared by the ``m`` outputs) rather than from the
    scaled rows ``G_l ⊙ c_l`` (``m·n`` per sample and unit): where ``n + 1 <= 4m``.

    Measured (float64, one core, both forms whole): 1.1-2.4× faster from ``n = 2`` to 16 within
    the rule (``hv.mlp([2, 16, 16, 3])`` at batch 64: 34 against 83 µs a call's terms), level at
    ``n = 32, m = 10``; beyond it the pairs lose, 0.4× at ``n = 10, m = 1``."""
    return n + 1 <= 4 * m


class HessianPlan(DiagonalPlan):
    """The full Hessian of :func:`hessviz.structured.chain.hessian` in numpy, ``(B, m, n, n)``:
    :class:`DiagonalPlan`'s sweeps, then each layer's term ``Σ_k c_{l,ik} g_k g_kᵀ`` (``g_k``:
    column ``k`` of ``G_l``) in one of two forms (:func:`pair_products_pay`), every product
    whole (these plans serve small chains, where the PyTorch kernel's symmetric panels buy
    nothing):

    - **pairs**: the products ``g_jk g_lk`` of the upper pairs ``j <= l`` (``(B, p, K)``,
      ``p = n(n + 1)/2``; ``(K_1, p)`` for the first layer, the same for every sample), then
      one product ``c_l (B, m, K) @ (B, K, p)`` — the outputs share the pairs; ``H`` is the
      ``(B, m, p)`` sum read back into both triangles (exactly symmetric: each pair is one
      number);
    - **scaled rows**: ``(G_l ⊙ c_l) G_lᵀ``, one batched product over samples and outputs, made
      exactly symmetric at the end.
    """

    def _buffers(self, B: int, n: int, m: int, K: int) -> None:
        super()._buffers(B, n, m, K)
        e = self.np_dtype
        self.pairs = pair_products_pay(n, m)
        if not self.pairs:
            self.scaled_rows = np.empty(B * m * n * K, e)  # G_l ⊙ c_l, (B, m, n, K)
            return
        j, k = np.triu_indices(n)
        p = len(j)
        self.upper = (j, k)
        # the rows j·n + k and k·n + j of the flattened (n, n) matrix both read pair (j, k)
        both = np.empty((n, n), np.intp)
        both[j, k] = both[k, j] = np.arange(p)
        self.both = both.ravel()
        # pairs (j, j..n-1) of row j are one block: one product per row, no index copies
        self.row_starts = np.cumsum([0] + [n - i for i in range(n)]).tolist()
        self.products = np.empty(B * p * K, e)  # g_j ⊙ g_k per pair, (B, p, K)
        self.sum = np.empty((B, m, p), e)
        self.term_p = np.empty((B, m, p), e)

    def _run(self, x: np.ndarray, layers: list) -> np.ndarray:
        self._sweep(x, layers)
        return (self._by_pairs if self.pairs else self._by_scaled_rows)(layers)

    def _by_pairs(self, layers: list) -> np.ndarray:
        B, n, m = self.B, self.n, len(self.sel)
        W1 = layers[0][0]  # (K_1, n): G_1 = W_1ᵀ, its pairs the same for every sample
        j, k = self.upper
        p = len(j)
        T = self.sum
        _gemm.matmul(self.c[0].reshape(B * m, -1), W1[:, j] * W1[:, k], out=T.reshape(B * m, p))
        starts = self.row_starts
        for layer, G in self._jacobians(layers):  # G: (B, n, K_l)
            P = _blocks(self.products, B, p, self.widths[layer])
            for i in range(n):  # row i's pairs (i, i..n-1)
                np.multiply(G[:, i : i + 1], G[:, i:], out=P[:, starts[i] : starts[i + 1]])
            T += np.matmul(self.c[layer], P.transpose(0, 2, 1), out=self.term_p)
        H = np.empty((B, m, n * n), self.np_dtype)
        # (every index is valid: "clip" only spares numpy's buffered copy of out, 2-2.6× faster)
        np.take(T, self.both, axis=2, out=H, mode="clip")
        return H.reshape(B, m, n, n)

    def _by_scaled_rows(self, layers: list) -> np.ndarray:
        B, n, m, widths = self.B, self.n, len(self.sel), self.widths
        W1 = layers[0][0]  # (K_1, n)
        Gc = _blocks(self.scaled_rows, B, m, widths[0], n)
        np.multiply(self.c[0][..., None], W1, out=Gc)  # (c ⊙ W_1) with rows K_1
        H = np.matmul(W1.T, Gc)  # W_1ᵀ diag(c) W_1, (B, m, n, n)
        for k, G in self._jacobians(layers):
            Gc = _blocks(self.scaled_rows, B, m, n, widths[k])
            np.multiply(G[:, None], self.c[k][:, :, None, :], out=Gc)
            H += np.matmul(Gc, G.transpose(0, 2, 1)[:, None])
        H += H.swapaxes(-1, -2)  # (numpy buffers the overlapping operands)
        H *= 0.5  # (a + b) / 2 = (b + a) / 2: exactly symmetric
        return H


@dataclass(frozen=True)
class NumpyRunner(ChainRunner):
    """A chain runner (:class:`~hessviz.structured.kernels.ChainRunner`, ``op`` one of
    :data:`PLANS`) that runs its numpy plan (:class:`Plan`, :class:`LaplacianPlan`,
    :class:`DiagonalPlan`, :class:`HessianPlan`) on inputs like those it was proved on:
    ``(B, n)`` contiguous CPU tensors of the plan's dtype and outputs, weights of that dtype on
    the CPU; anything else (a traced call, another batch size, a weight replaced by a float32
    one) runs the PyTorch kernel."""

    plan: _NumpyPlan | None = field(default=None, compare=False)
    #: ``(aliases, dtypes, layers)``: numpy views of the weights (:func:`arrays`) and what
    #: they were made from
    views: list = field(default_factory=lambda: [None], compare=False)
    #: torch's thread count when the plan won its race (:func:`_wins_race`); None: it runs
    #: where numpy's BLAS is the faster one (:func:`_numpy_blas_is_faster`)
    threads: int | None = field(default=None, compare=False)
    #: each Linear layer's ``_parameters`` dict, where every layer keeps its weight and bias
    #: there (``nn.Linear``): :meth:`layers` reads the tensors there at every call, a quarter of
    #: the time of :func:`~hessviz.structured.chain.tensors`; None: it calls that
    params: list | None = field(default=None, compare=False, init=False)

    def __post_init__(self):
        own = [getattr(lin, "_parameters", {}) for lin in self.chain.linears]
        if all("weight" in d and "bias" in d for d in own):
            object.__setattr__(self, "params", own)

    def __call__(self, p, X: torch.Tensor, *args):
        if not torch.compiler.is_compiling() and self._takes(X, *args):
            layers = self.layers()
            if layers is not None:
                return self.plan(X, *args[:-1], layers=layers)
        return super().__call__(p, X, *args)

    def repeat(self, X: torch.Tensor, *args) -> torch.Tensor | None:
        """What a repeated call serves (:meth:`hessviz._hot.Entry.run`; autograd's mode does not
        matter): the plan's result, after proving ``X`` (and ``V``) finite on the numpy views
        the plan reads (:func:`hessviz._gemm.finite_product`), or None when they are not;
        NotImplemented when the plan does not take these inputs or weights (then the entry
        runs the kernel as usual: ``self(p, X, *args)`` under ``torch.no_grad()``).

        Called by the entry of the request this runner was proved on, with what its key and
        :meth:`~hessviz._hot.Entry.inputs` guarantee — ``X`` (and ``V``) ``(B, n)`` CPU tensors
        of the plan's dtype, the plan's ``sel`` — so only what may change from call to call is
        checked here (:meth:`_takes` checks it all)."""
        hvp = len(args) == 2
        V = args[0] if hvp else X
        if (
            type(X) is not torch.Tensor
            or type(V) is not torch.Tensor
            or not (X.is_contiguous() and V.is_contiguous() and self.pays())
            or torch.compiler.is_compiling()
        ):
            return NotImplemented
        layers = self.layers()
        if layers is None:
            return NotImplemented
        inputs = (array(X), array(V)) if hvp else (array(X),)
        if not _gemm.finite_product(inputs[0], inputs[-1]):  # x · v, or x · x
            return None
        return self.plan.on_arrays(*inputs, layers=layers)

    def _takes(self, X: torch.Tensor, *args) -> bool:
        """``X`` (and an HVP's ``V``) and ``sel`` are what the plan was proved on, and it is
        still the faster kernel."""
        plan = self.plan
        if len(args) != 1 + (self.op == "hvp"):
            return False
        V = args[0] if len(args) == 2 else X  # (written out: this runs at every call)
        return (
            type(X) is torch.Tensor
            and type(V) is torch.Tensor
            and X.shape[0] == plan.B
            and X.dtype == plan.dtype
            and V.dtype == plan.dtype
            and X.is_cpu
            and V.is_cpu
            and X.is_contiguous()
            and V.is_contiguous()
            and tuple(args[-1]) == plan.sel
            and self.pays()
        )

    def pays(self) -> bool:
        """The plan is still the faster kernel: the race it won was at torch's thread count
        of now, or (HVPs) numpy's BLAS is the faster one (torch's thread count may have
        changed); the other plans run the whole batch in one piece, where only a race says."""
        return self.threads == torch.get_num_threads() or (
            self.op == "hvp" and _numpy_blas_is_faster(self.plan.dtype)
        )

    def layers(self) -> list | None:
        """:func:`arrays` of the chain's weights as they are now, or None when one is not a
        plain CPU tensor of the plan's dtype and shape (made again when a weight was
        replaced)."""
        params = self.params
        if params is None:
            ts = tensors(self.chain)
        else:  # what tensors(self.chain) returns
            ts = [t for d in params for t in (d["weight"], d["bias"]) if t is not None]
        held = self.views[0]  # (the tensors' aliases and dtypes when the views were made, views)
        if (
            held is not None
            and len(ts) == len(held[0])
            # the same memory: storage, offset, sizes and strides (a weight replaced, re-laid
            # or moved is not; 0.4 µs a tensor against 0.6 for reading those four here)
            and all(map(torch.Tensor.is_set_to, ts, held[0]))
            and [t.dtype for t in ts] == held[1]  # (a view as another dtype of equal size)
        ):
            return held[2]
        dtype = self.plan.dtype
        if tuple(t.shape for t in ts) != self.plan.shapes or not all(
            type(t) in _gemm.PLAIN and t.is_cpu and t.dtype == dtype for t in ts
        ):
            return None
        layers = arrays(self.chain)
        # one assignment: a concurrent call sees old or new
        self.views[0] = ([t.detach() for t in ts], [t.dtype for t in ts], layers)
        return layers


def _numpy_blas_is_faster(dtype: torch.dtype) -> bool:
    """numpy's products beat torch's for ``dtype`` at torch's thread count, both layouts of the
    right factor the kernel uses (``W`` and ``Wᵀ``): :func:`hessviz._gemm.numpy_is_faster`."""
    threads = torch.get_num_threads()
    return _gemm.numpy_is_faster(dtype, threads, "N") and _gemm.numpy_is_faster(dtype, threads, "T")


#: a plain call races the numpy kernel against PyTorch's only where PyTorch's took at most this
#: long (seconds): the race adds four kernel calls to the first call
RACE_LIMIT_S = 0.02
#: the numpy kernel wins its race when its best time is at most this fraction of PyTorch's
RACE_MARGIN = 0.9


def _wins_race(numpy_call: Callable, torch_call: Callable) -> bool:
    """The numpy kernel's call beats PyTorch's (both without arguments, on the same inputs):
    best of two warm calls each, interleaved, by :data:`RACE_MARGIN`; no race (False) where
    PyTorch's call takes more than :data:`RACE_LIMIT_S`, and none after a numpy call that took
    twice PyTorch's time (so, numpy's first call aside, at most about ``6 ×``
    :data:`RACE_LIMIT_S` in all).

    Why a race, not only the BLAS probe: on small and middling chains the kernel's time is its
    ~45 elementwise operations, and numpy's cost about a microsecond each against a few for
    PyTorch's. On an AVX-512 Xeon whose MKL beat numpy's BLAS 1.3-1.9×, the numpy kernel still
    ran 2.5-3× faster on ``hv.mlp([2, 16, 16, 3])`` at batch 64 and 1.4-2.6× at width 64,
    batch 256-1024 (float32 and float64)."""
    best = [math.inf, math.inf]  # PyTorch's, numpy's
    with torch.no_grad():
        for _ in range(2):
            for i, call in enumerate((torch_call, numpy_call)):
                start = time.perf_counter()
                call()
                best[i] = min(best[i], time.perf_counter() - start)
                if best[0] > RACE_LIMIT_S or (i == 1 and best[1] > 2 * best[0]):
                    return False  # not raced, or lost already
    return best[1] <= RACE_MARGIN * best[0]


#: the numpy plan of each chain op that has one
PLANS = {
    "hvp": Plan,
    "laplacian": LaplacianPlan,
    "diagonal": DiagonalPlan,
    "hessian": HessianPlan,
}


def proved(runner, X: torch.Tensor, V: torch.Tensor | None, sel: tuple, expected: torch.Tensor):
    """``runner`` with a numpy plan in front (:class:`NumpyRunner`) when it is a chain runner
    (:class:`~hessviz.structured.kernels.ChainRunner`) of an op in :data:`PLANS` (``V``: the
    HVP's directions, None for the other ops), the numpy kernel applies to its chain and
    inputs, its results on ``X`` (``(B, n)``) equal ``expected`` (the PyTorch kernel's) to
    round-off, and it is the faster one: numpy's BLAS is faster for the dtype at torch's thread
    count (both operand layouts; HVPs only), or the whole kernel won its race on these inputs
    (:func:`_wins_race`); else ``runner`` itself."""
    if (
        not isinstance(runner, ChainRunner)
        or runner.op not in PLANS
        or not supports(runner.chain, X)
    ):
        return runner
    if runner.op == "laplacian" and narrows(runner.chain):
        # a first layer narrower than the input: PyTorch's kernel carries its K_1 rows
        # (kernels.laplacian_stem), the plan W_1ᵀ's n rows
        return runner
    # the HVP plan wherever numpy's BLAS is faster; the other plans run the whole batch in one
    # piece (PyTorch's kernels run cache-sized chunks), so only a race decides for them
    blas = runner.op == "hvp" and _numpy_blas_is_faster(X.dtype)
    try:  # buffers for the whole batch (allocated lazily; a strict system may refuse them)
        plan = PLANS[runner.op](runner.chain, X.shape[0], X.dtype, sel)
    except MemoryError:  # PyTorch's kernel, which runs cache-sized chunks, stays
        return runner
    threads = None if blas else torch.get_num_threads()  # a race's verdict holds at this count
    fast = NumpyRunner(runner.chain, runner.op, plan=plan, threads=threads)
    X = X.contiguous()
    inputs = (X,) if V is None else (X, V.to(X.dtype).contiguous())
    layers = fast.layers()
    if layers is None:
        return runner
    try:
        if not blas and not _wins_race(
            lambda: plan(*inputs, layers=layers), lambda: runner(None, *inputs, sel)
        ):
            return runner
        got = plan(*inputs, layers=layers)
    except Exception:  # noqa: BLE001 - the PyTorch kernel stays
        return runner
    if got is None or not agrees(got, expected.reshape(got.shape)):
        return runner
    return fast
