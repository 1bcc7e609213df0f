"""The layer-wise engine's self-consistency check and cost model (used by ``method="auto"``
and the memory budget)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._problem import Problem
from .gram import panel_edges
from .kernels import Pass, forward, narrowing_pays_for
from .layers import Unsupported, parse


@dataclass(frozen=True)
class Cost:
    """Per-sample estimates: ``flops`` for a full Hessian of ``m`` outputs, ``bytes`` of work."""

    structured_flops: float
    func_flops: float
    work_elems_per_sample: float
    work_elems_per_output: float


def check(p: Problem, y: torch.Tensor) -> Pass:
    """Run the engine's forward on the first sample and check it reproduces ``f`` exactly.

    Raises :class:`Unsupported` if the layers cannot be parsed, the layout assumption (samples
    along dim 0) does not hold for this input, or the values differ from ``f(x)`` (``y``).
    """
    layers = parse(p.f)
    try:
        with torch.no_grad():
            fw = forward(layers, p, p.X[:1], jacobian=False)
    except Exception as err:  # the layer-by-layer run does not accept this input layout
        raise Unsupported(f"the layers cannot be run one by one on this input ({err})") from err
    expected = y.reshape(p.B, -1)[:1]
    tol = 1e3 * torch.finfo(y.dtype).eps * (1 + float(expected.abs().max()))
    if fw.y.shape != expected.shape or not torch.allclose(fw.y, expected, rtol=0, atol=tol):
        raise Unsupported("running the layers one by one does not reproduce f(x)")
    return fw


def cost(p: Problem, fw: Pass) -> Cost:
    """Estimate structured vs torch.func costs (multiply-adds per sample) from a :func:`check` pass.

    Structured: the forward Jacobian (``r`` directions through the body up to the last
    activation) plus the assembly, ``m`` batched GEMMs of ``r × K`` by ``K × r`` per activation
    (and ``P H Pᵀ`` when the stem narrows). torch.func's ``jacfwd(jacrev)``: ``n`` tangents
    through the forward pass and through ``m`` reverse passes, each about twice a forward.
    """
    n, m = p.n, p.m
    shapes = fw.stem_shapes[:-1] + fw.shapes
    layers = fw.stem + fw.body
    flops = [
        s_in.numel() if lay.elementwise else lay.flops(s_in.numel(), s_out.numel())
        for lay, s_in, s_out in zip(layers, shapes[:-1], shapes[1:])
    ]
    fwd = sum(flops)
    jac_body = sum(flops[len(fw.stem) : len(fw.stem) + max(fw.last, 0)])
    K1 = fw.stem_shapes[-1].numel()
    Ks = [a.s1.shape[1] for a in fw.acts]
    rest = sum(Ks[1:])
    if fw.stem and K1 < n:
        r = K1
        if narrowing_pays_for(n, r, rest):
            assembly = m * (r * r * rest + n * r * r + n * n * r)
        else:
            assembly = n * r * rest + m * n * n * (r + rest)
    else:
        r = n
        assembly = m * n * n * sum(Ks)
    structured = r * jac_body + assembly
    func = n * (1 + 2 * m) * fwd + m * n * n
    K_max = max([0, *Ks])
    # per output: the scaled copy (one panel of every layer's rows side by side when the
    # assembly uses panels, see gram.py), the panels' sum and the result, P H, H in x
    edges = panel_edges(r, m)
    scaled = r * K_max if len(edges) == 2 else (edges[1] - edges[0]) * sum(Ks)
    per_output = scaled + (2 if len(edges) > 2 else 1) * r * r + r * n + n * n
    return Cost(structured, func, r * sum(Ks) + n * K_max, per_output)
