r"""The chain HVP kernel written in numpy: what :func:`hessviz.compile` races on the CPU.

:func:`hessviz.structured.chain.hvp` is ~45 small tensor operations around its GEMMs; on a
small MLP each PyTorch CPU operation costs a few microseconds of dispatch, and compiling them
(AOTInductor) still leaves the GEMMs to torch's BLAS. The same sweep in numpy costs about a
microsecond per operation, runs its products in numpy's BLAS (:mod:`hessviz._gemm`: faster here
in float64) and its activations in numpy's vectorised ``tanh``/``sin``/``exp``
(:data:`hessviz.ops.NUMPY_DERIVATIVES`). Measured here, one core, ``hv.mlp([10, 64, 64, 64,
3])``, batch 64, float64: 0.31 ms against 0.47 ms for the AOTInductor kernel and 0.25 ms for
JAX jit.

Only :func:`hessviz.compile` runs it, for chains whose activations are all exactly ``tanh``,
``sigmoid`` or ``sin`` on CPU float32/float64 inputs (:func:`supports`), and only after its
result on the example equalled the eager kernel's to round-off and it won the race there — the
same proof every compiled kernel gives. Same mathematics, same notation as
:func:`~hessviz.structured.chain.hvp`.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import ops
from .._gemm import NUMPY_DTYPES, array
from .chain import Chain
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


def hvp(
    ch: Chain, X: torch.Tensor, V: torch.Tensor, sel: tuple[int, ...], layers: list | None = None
) -> torch.Tensor:
    """``(B, m, n)``: ``Σ_l J_lᵀ(c_l ⊙ J_l v)``, as :func:`~hessviz.structured.chain.hvp`
    computes it (one tangent forward with the values, one reverse sweep for all outputs).
    ``X``, ``V``: ``(B, n)`` CPU tensors that :func:`supports` accepts; ``layers``:
    :func:`arrays` of ``ch`` (made here when not given). A new tensor back."""
    layers = arrays(ch) if layers is None else layers
    fns = [derivatives_into(m, ops.NUMPY_DERIVATIVES) for m in ch.activations]
    B = X.shape[0]
    a, t = X.numpy(), V.numpy()
    s1s, s2ts = [], []
    for (W, b), derivs in zip(layers, fns):
        z = a @ W.T
        if b is not None:
            z += b
        a, s1, s2 = derivs(z)
        if s1s:  # J_l v at z_l
            t = t * s1s[-1]
        t = t @ W.T
        s1s.append(s1)
        s2ts.append(np.multiply(s2, t, out=s2))
    d = layers[-1][0]  # (m, K_L) rows of the last weight, then (B, m, K_l)
    if sel != tuple(range(d.shape[0])):
        d = d[list(sel)]
    m = d.shape[0]
    q = None
    for k in range(len(fns) - 1, -1, -1):
        W = layers[k][0]
        K = W.shape[0]
        s2t = s2ts[k][:, None, :]
        # q at z_k: the HVP's part from the layers above, carried through σ_k', plus layer k's
        if q is None:
            q = s2t * d
        else:
            q *= s1s[k][:, None, :]
            q += s2t * d
        q = (q.reshape(B * m, K) @ W).reshape(B, m, -1)
        if k > 0:
            d = ((s1s[k][:, None, :] * d).reshape(B * m, K) @ W).reshape(B, m, -1)
    return torch.from_numpy(q)
