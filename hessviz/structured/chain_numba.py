r"""The chain HVP kernel with its elementwise work fused by numba: what :func:`hessviz.compile`
races on the CPU when numba is installed (``pip install hessviz[fast]``).

The numpy kernel (:mod:`hessviz.structured.chain_numpy`) spends about a third of its time on a
small MLP in elementwise passes: each of ``σ'``, ``σ''``, ``σ''⊙t``, ``σ'⊙t`` and, per reverse
layer, ``r = σ'⊙p + σ''t⊙d`` and ``g = σ'⊙d`` is one numpy call that reads and writes whole
arrays. Here each layer's elementwise work is one loop compiled by numba, in the same call as
that layer's products (numba's ``np.dot``: the BLAS through SciPy). The activation itself
(``tanh``, ``sigmoid``, ``sin``) stays numpy's vectorised function: numba's scalar ``tanh`` is
about 6× slower.

Same mathematics and notation as :func:`~hessviz.structured.chain.hvp`, same buffers and layout
as :class:`~hessviz.structured.chain_numpy.Plan`, whose sweep :class:`FusedPlan` replaces. The
loops compile at their first call for a dtype (seconds, then cached on disk by numba), which is
why only :func:`hessviz.compile` runs them, never a plain call.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .. import ops
from .chain import Chain
from .chain_numpy import Plan
from .layers import derivatives_into

_TANH, _SIGMOID, _SIN = 0, 1, 2


def _tanh(z: np.ndarray, s1: np.ndarray) -> None:
    np.tanh(z, out=z)


def _sigmoid(z: np.ndarray, s1: np.ndarray) -> None:
    ops.np_sigmoid_into(z)


def _sin(z: np.ndarray, s1: np.ndarray) -> None:
    np.cos(z, out=s1)  # σ' = cos z, before z is overwritten by sin z
    np.sin(z, out=z)


#: activation op → (its code in the fused loops, the numpy step that writes ``σ(z)`` into
#: ``z`` (``(B, K)``) and, for ``sin``, ``σ'(z)`` into ``s1``); the loops take σ' and σ'' from
#: σ by the closed forms of :data:`hessviz.ops.NUMPY_DERIVATIVES`
ACTIVATIONS = {"tanh": (_TANH, _tanh), "sigmoid": (_SIGMOID, _sigmoid), "sin": (_SIN, _sin)}

_jit = numba.njit(cache=True, nogil=True)


@numba.njit(cache=True, nogil=True, inline="always")
def _derivatives(kind, a, cos, one, two):
    """``(σ', σ'')`` at one element from ``a = σ(z)`` (and ``cos z`` for ``sin``)."""
    if kind == _TANH:
        s = one - a * a
        return s, -two * a * s
    if kind == _SIGMOID:
        s = a - a * a
        return s, s * (one - two * a)
    return cos, -a


@_jit
def _add_bias(Z, b):
    """``Z += b`` (``(B, K)``, ``(K,)``; ``b`` empty: no bias)."""
    if b.shape[0]:
        for i in range(Z.shape[0]):
            for j in range(Z.shape[1]):
                Z[i, j] += b[j]


@_jit
def _first(x, v, W, b, F):
    """``F = [x Wᵀ + b; v Wᵀ]`` and True, or False (``F`` untouched) when ``x`` or ``v``
    holds a NaN or an infinity: ``x``, ``v`` ``(B, n)``, ``W`` ``(K, n)``, ``F``
    ``(2, B, K)``."""
    finite = True
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            finite &= np.isfinite(x[i, j]) & np.isfinite(v[i, j])
    if not finite:
        return False
    np.dot(x, W.T, F[0])
    np.dot(v, W.T, F[1])
    _add_bias(F[0], b)
    return True


@_jit
def _tangents(kind, one, two, F, s1, s2t, push):
    """At one activation layer, ``F = [a; t]`` ``(2, B, K)``: ``s1 = σ'``, ``s2t = σ''⊙t``
    and, when ``push``, ``t ← σ'⊙t`` (the tangent at ``a``)."""
    B, K = s1.shape
    for i in range(B):
        for j in range(K):
            d1, d2 = _derivatives(kind, F[0, i, j], s1[i, j], one, two)
            t = F[1, i, j]
            s1[i, j] = d1
            s2t[i, j] = d2 * t
            if push:
                F[1, i, j] = d1 * t


@_jit
def _forward(kind, one, two, F_in, s1, s2t, W, b, F):
    """Finish layer ``k - 1`` (:func:`_tangents` of ``F_in``), then ``F = [a; σ'⊙t] Wᵀ`` with
    ``F[0] += b``: ``F_in`` ``(2, B, K_in)``, ``W`` ``(K, K_in)``, ``F`` ``(2, B, K)``."""
    _tangents(kind, one, two, F_in, s1, s2t, True)
    B2, K_in, K = 2 * s1.shape[0], W.shape[1], W.shape[0]
    np.dot(F_in.reshape(B2, K_in), W.T, F.reshape(B2, K))
    _add_bias(F[0], b)


@_jit
def _top(kind, one, two, F, s1, s2t, W_out, sel, Q):
    """Finish the last activation layer and seed the reverse sweep: ``Q = [r; g]``
    ``(2, m, B, K)`` with ``r = d ⊙ σ''t``, ``g = d ⊙ σ'`` for the output rows
    ``d = W_out[sel]`` (``W_out`` ``(M, K)``, ``sel`` ``(m,)``)."""
    _tangents(kind, one, two, F, s1, s2t, False)
    B, K = s1.shape
    for c in range(sel.shape[0]):
        row = sel[c]
        for i in range(B):
            for j in range(K):
                Q[0, c, i, j] = W_out[row, j] * s2t[i, j]
                Q[1, c, i, j] = W_out[row, j] * s1[i, j]


@_jit
def _backward(Q, W, s1, s2t, P, last):
    """``[p; d] = [r W; g W]`` into ``P``, then ``r ← σ'⊙p + σ''t⊙d`` and (unless ``last``)
    ``g ← σ'⊙d`` in place: ``Q`` ``(2, m, B, K)``, ``W`` ``(K, K_in)``, ``s1``, ``s2t``
    ``(B, K_in)`` of the layer below, ``P`` ``(2, m, B, K_in)``."""
    _, m, B, K = Q.shape
    K_in = W.shape[1]
    np.dot(Q[0].reshape(m * B, K), W, P[0].reshape(m * B, K_in))  # two products of m B rows:
    np.dot(Q[1].reshape(m * B, K), W, P[1].reshape(m * B, K_in))  # faster here than one of 2mB
    for c in range(m):
        for i in range(B):
            for j in range(K_in):
                s, d = s1[i, j], P[1, c, i, j]
                P[0, c, i, j] = P[0, c, i, j] * s + d * s2t[i, j]
                if not last:
                    P[1, c, i, j] = d * s


@_jit
def _last(Q, W, rows, R):
    """``R[i, c] = (r W)[c, i]``: ``Q`` ``(2, m, B, K)``, ``W`` ``(K, n)``, ``rows``
    ``(m B, n)`` scratch, ``R`` ``(B, m, n)``."""
    _, m, B, K = Q.shape
    np.dot(Q[0].reshape(m * B, K), W, rows)
    for c in range(m):
        for i in range(B):
            R[i, c, :] = rows[c * B + i, :]


def supports(ch: Chain) -> bool:
    """Whether every activation of ``ch`` is one the fused loops know (:data:`ACTIVATIONS`)."""
    return len(ch.activations) == len(ch.derivs) and all(
        derivatives_into(m, ACTIVATIONS) for m in ch.activations
    )


class FusedPlan(Plan):
    """:class:`~hessviz.structured.chain_numpy.Plan` whose sweep runs the fused loops: the same
    result to round-off, one numba call per layer per sweep."""

    def __init__(self, ch: Chain, B: int, dtype: torch.dtype, sel: tuple[int, ...]):
        super().__init__(ch, B, dtype, sel)
        self.acts = [derivatives_into(m, ACTIVATIONS) for m in ch.activations]
        np_dtype = self.s1[0].dtype
        self.one, self.two = np_dtype.type(1), np_dtype.type(2)
        self.no_bias = np.empty(0, np_dtype)
        self.sel_index = np.asarray(self.sel, dtype=np.int64)
        n = ch.linears[0].weight.shape[1]
        self.rows = np.empty((len(self.sel) * B, n), np_dtype)

    def _run(self, x: np.ndarray, v: np.ndarray, layers: list) -> np.ndarray | None:
        """The ``(B, m, n)`` HVPs, or None when ``x`` or ``v`` is not finite."""
        if not all(t is None or t.flags.c_contiguous for layer in layers for t in layer):
            # the loops are compiled for contiguous arrays: another layout would compile anew
            # (seconds) at every call, and numba's np.dot refuses it
            raise TypeError("numba kernel: a weight or bias is not contiguous")
        acts, one, two, L = self.acts, self.one, self.two, len(self.acts)
        F, s1s, s2ts = self.forward, self.s1, self.s2t
        W, b = layers[0]
        if not _first(x, v, W, self.no_bias if b is None else b, F[0]):
            return None  # the caller's plain path explains the non-finite input
        for k in range(L):
            if k > 0:
                W, b = layers[k]
                kind = acts[k - 1][0]
                b = self.no_bias if b is None else b
                _forward(kind, one, two, F[k - 1], s1s[k - 1], s2ts[k - 1], W, b, F[k])
            acts[k][1](F[k][0], s1s[k])  # σ(z) in numpy's vectorised functions
        Q = self._slab(0, L - 1)
        _top(
            acts[L - 1][0],
            one,
            two,
            F[L - 1],
            s1s[L - 1],
            s2ts[L - 1],
            layers[L][0],
            self.sel_index,
            Q,
        )
        for k in range(L - 1, 0, -1):
            P = self._slab((L - k) % 2, k - 1)
            _backward(Q, layers[k][0], s1s[k - 1], s2ts[k - 1], P, k == 1)
            Q = P
        R = np.empty((self.B, len(self.sel), self.rows.shape[1]), Q.dtype)
        _last(Q, layers[0][0], self.rows, R)
        return R
