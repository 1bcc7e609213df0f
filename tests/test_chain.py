"""The lean chain kernels (:mod:`hessviz.structured.chain`) against the float64 reference.

Chains of Linear layers and every activation of the catalogue, several depths and widths
(including a first layer as wide as the input), selected outputs; each kernel must equal
torch.func on the same model, and ``auto`` must run them for these models.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cases import batched_call

import hessviz as hv
from hessviz import ops, structured
from hessviz._problem import prepare
from hessviz.structured import chain, kernels

D = torch.float64
SMOOTH = [name for name, a in ops.ACTIVATIONS.items() if not a.piecewise_linear]
SHAPES = [[3, 5, 2], [2, 16, 16, 3], [4, 4, 7, 3, 1], [5, 6, 2, 6, 2]]


def _chain_of(model, X, op):
    p, _ = prepare("test", model, X, batched=True, outputs=None)
    return p, kernels._chain(structured.parse(model), p, op)


@pytest.mark.parametrize("act", SMOOTH)
@pytest.mark.parametrize("sizes", SHAPES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("sel", [None, (0,), (-1, 0)], ids=["all", "first", "two"])
def test_chain_kernels_equal_torch_func(act, sizes, sel):
    model = hv.mlp(sizes, act, seed=sum(sizes))
    gen = torch.Generator().manual_seed(len(sizes))
    X = torch.randn(4, sizes[0], dtype=D, generator=gen)
    V = torch.randn(4, sizes[0], dtype=D, generator=gen)
    p, ch = _chain_of(model, X, "hessian")
    assert ch is not None
    idx = p.sel if sel is None else tuple(q % p.M for q in sel)
    outputs = None if sel is None else list(sel)
    ref = {
        "hessian": hv.hessian(model, X, batched=True, outputs=outputs, method="func"),
        "diagonal": hv.hessian_diagonal(model, X, batched=True, outputs=outputs, method="func"),
        "laplacian": hv.laplacian(model, X, batched=True, outputs=outputs, method="func"),
        "hvp": hv.hvp(model, X, V, batched=True, outputs=outputs, method="func"),
    }
    with torch.no_grad():
        got = {
            "hessian": chain.hessian(ch, p.X, idx),
            "diagonal": chain.diagonal(ch, p.X, idx),
            "laplacian": chain.laplacian(ch, p.X, idx),
            "hvp": chain.hvp(ch, p.X, V, idx),
            "hvp_traced": chain.hvp_traced(ch, p.X, V, idx),  # what hv.compile compiles
            "laplacian_traced": chain.laplacian_traced(ch, p.X, idx),
        }
    for op, R in got.items():
        expected = ref[op.removesuffix("_traced")].reshape(R.shape)
        torch.testing.assert_close(R, expected, rtol=1e-10, atol=1e-12, msg=op)


def test_the_traced_hvp_without_biases_and_with_one_output_equals_torch_func():
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 6, bias=False), torch.nn.Tanh(), torch.nn.Linear(6, 5, bias=False),
        torch.nn.Sigmoid(), torch.nn.Linear(6 - 1, 1),
    ).to(D)  # fmt: skip
    gen = torch.Generator().manual_seed(9)
    X, V = torch.randn(7, 3, dtype=D, generator=gen), torch.randn(7, 3, dtype=D, generator=gen)
    p, ch = _chain_of(model, X, "hvp")
    with torch.no_grad():
        got = chain.hvp_traced(ch, p.X, V, p.sel)
    ref = hv.hvp(model, X, V, batched=True, method="func")
    torch.testing.assert_close(got, ref.reshape(got.shape), rtol=1e-10, atol=1e-12)


def test_auto_runs_the_chain_kernels_and_narrowing_stems_keep_their_own():
    wide, X = hv.mlp([3, 8, 8, 2], "tanh", seed=0), torch.randn(5, 3, dtype=D)
    assert _chain_of(wide, X, "hessian")[1] is not None
    narrow, Xn = hv.mlp([12, 3, 4, 2], "silu", seed=3), torch.randn(3, 12, dtype=D)
    assert _chain_of(narrow, Xn, "hessian")[1] is None  # carried in z_1 by the general kernels
    assert _chain_of(narrow, Xn, "hvp")[1] is not None  # HVPs carry no Jacobian
    calls = []
    original = chain.hessian
    try:
        chain.hessian = lambda *a, **kw: calls.append(1) or original(*a, **kw)
        H = hv.hessian(wide, X, batched=True)
    finally:
        chain.hessian = original
    assert calls, "auto did not run the chain kernel on an MLP"
    torch.testing.assert_close(H, hv.hessian(wide, X, batched=True, method="func"))


@pytest.mark.parametrize(
    "sizes, in_x",
    [([40, 20, 20, 20, 3], True), ([12, 3, 4, 2], False), ([60, 8, 30, 30, 1], False)],
    ids=["equal-widths", "narrow-then-wider", "bottleneck"],
)
def test_diagonal_of_a_narrowing_chain_goes_where_it_costs_less(sizes, in_x):
    """A first layer narrower than the input: the diagonal carries Jacobians in ``x`` (the chain
    kernel) when that costs fewer multiply-adds than ``z_1`` and mapping back, and is exact
    either way; the full Hessian stays in ``z_1``, the Laplacian always takes the chain (its
    ``K_1`` rows: ``test_a_narrowing_chain_laplacian_carries_first_layer_rows``)."""
    model = hv.mlp(sizes, "tanh", seed=len(sizes))
    X = torch.randn(3, sizes[0], dtype=D, generator=torch.Generator().manual_seed(2))
    assert (_chain_of(model, X, "diagonal")[1] is not None) is in_x
    assert _chain_of(model, X, "hessian")[1] is None
    assert _chain_of(model, X, "laplacian")[1] is not None
    torch.testing.assert_close(
        hv.hessian_diagonal(model, X, batched=True),
        hv.hessian_diagonal(model, X, batched=True, method="func"),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    "sizes, act",
    [([40, 20, 20, 20, 3], "tanh"), ([12, 3, 4, 2], "softplus"), ([60, 8, 30, 30, 1], "sin"),
     ([9, 4, 1], "sigmoid")],
    ids=["equal-widths", "narrow-then-wider", "bottleneck", "one-hidden"],
)  # fmt: skip
def test_a_narrowing_chain_laplacian_carries_first_layer_rows(sizes, act, monkeypatch):
    """``K_1 < n``: the chain Laplacian runs on the ``K_1`` rows of the first layer's QR factor
    (``RᵀR = W_1 W_1ᵀ``, :func:`~hessviz.structured.kernels.laplacian_stem`) instead of the
    ``n`` rows of ``W_1ᵀ``; the same Laplacian as with those rows and as torch.func, whole and in
    chunks, for all outputs and a selection."""
    model = hv.mlp(sizes, act, seed=sum(sizes))
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(7, sizes[0], dtype=D, generator=gen)
    p, ch = _chain_of(model, X, "laplacian")
    stem = kernels.laplacian_stem(ch, X)
    R, norms = stem
    W1 = model[0].weight.detach()
    K1 = W1.shape[0]
    assert R.shape == (K1, K1) and torch.equal(R, R.triu())
    torch.testing.assert_close(
        R.T @ R, W1 @ W1.T, rtol=0, atol=1e-13 * float((W1 @ W1.T).abs().max())
    )
    torch.testing.assert_close(norms, (W1 * W1).sum(1), rtol=1e-14, atol=0)
    seen = []
    original = chain.laplacian
    monkeypatch.setattr(
        chain,
        "laplacian",
        lambda *a, stem=None, **kw: seen.append(stem) or original(*a, stem=stem, **kw),
    )
    for sel in (p.sel, p.sel[-1:]):
        expected = hv.laplacian(model, X, batched=True, method="func")[:, list(sel)]
        with torch.no_grad():
            by_rows = chain.run("laplacian", ch, X, sel, stem=stem)
            by_columns = chain.run("laplacian", ch, X, sel)  # W_1ᵀ's n rows
            in_chunks = chain.run("laplacian", ch, X, sel, stem=stem, step=3)
        for got in (by_rows, in_chunks):
            torch.testing.assert_close(got, by_columns, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    seen.clear()
    torch.testing.assert_close(
        hv.laplacian(model, X, batched=True), hv.laplacian(model, X, batched=True, method="func")
    )
    assert seen and all(t is not None and t[0].shape == (K1, K1) for t in seen), "auto took W_1ᵀ"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(33, 4, 7), (128, 8, 128), (40, 1, 1)])
def test_the_laplacians_sum_of_squares_equals_torch_in_either_library(dtype, shape, monkeypatch):
    """``Σ_j J_j²`` over the rows of a ``(r, B, K)`` stack (the forward Laplacian's rows above
    :data:`~hessviz.structured.chain.ROW_BY_ROW`): numpy's ``einsum`` with one or two torch
    threads, torch's square-and-sum with more; both equal the float64 sum, propagate NaN and
    infinities, and write into ``out``."""
    gen = torch.Generator().manual_seed(sum(shape))
    J = torch.randn(*shape, generator=gen, dtype=torch.float64)
    J[0, 0, 0] = math.nan
    J[-1, -1, -1] = math.inf
    expected = (J * J).sum(0)
    J = J.to(dtype)
    used = []
    real = np.einsum
    monkeypatch.setattr(np, "einsum", lambda *a, **k: used.append(a[0]) or real(*a, **k))
    scratch = torch.empty(math.prod(shape), dtype=dtype)
    for threads, numpy_used in ((1, True), (4, False)):
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        used.clear()
        out = torch.full(shape[1:], -1.0, dtype=dtype)
        got = chain._sum_of_squares(J, out, lambda s: scratch[: math.prod(s)].view(s))
        assert got is out and bool(used) is numpy_used
        tol = 1e-13 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got.double(), expected, rtol=tol, atol=0, equal_nan=True)


def test_a_first_layer_as_wide_as_the_input_keeps_its_own_rows():
    """``K_1 >= n``: ``W_1ᵀ`` (``n`` rows) is already the thinner; no factor is made."""
    for sizes in ([6, 6, 3, 1], [4, 9, 2]):
        model = hv.mlp(sizes, "tanh", seed=1)
        X = torch.randn(2, sizes[0], dtype=D)
        assert kernels.laplacian_stem(_chain_of(model, X, "laplacian")[1], X) is None


@pytest.mark.parametrize("op", ["hessian", "diagonal", "laplacian", "hvp"])
@pytest.mark.parametrize("outputs", [None, [1]], ids=["all", "second"])
def test_a_batch_run_in_chunks_equals_torch_func(op, outputs, monkeypatch):
    """11 samples in chunks of 4 (the last one short), HVP directions sliced alike."""
    model = hv.mlp([3, 8, 8, 2], "tanh", seed=5)
    gen = torch.Generator().manual_seed(7)
    X = torch.randn(11, 3, dtype=D, generator=gen)
    V = torch.randn(11, 3, dtype=D, generator=gen)
    call = batched_call(op, model, X, V, outputs=outputs)
    sizes = []
    original = getattr(chain, op)

    def spy(ch, X, *args, **kw):
        sizes.append(X.shape[0])
        return original(ch, X, *args, **kw)

    monkeypatch.setattr(chain, "chunk_size", lambda *a: 4)
    monkeypatch.setattr(chain, op, spy)
    got = call()
    assert sizes[-3:] == [4, 4, 3] and 11 not in sizes  # (a one-sample check may come first)
    torch.testing.assert_close(got, call(method="func"), rtol=1e-10, atol=1e-12)


def test_a_plan_sizes_its_chunks_once_per_request(monkeypatch):
    """A repeated call reuses its runner's chunk size (it costs ~3 µs a call to work out)."""
    model = hv.mlp([3, 8, 8, 2], "tanh", seed=5)
    X = torch.randn(11, 3, dtype=D, generator=torch.Generator().manual_seed(3))
    asked = []
    monkeypatch.setattr(chain, "chunk_size", lambda op, ch, X, m, r=None: asked.append(op) or 4)
    first = hv.laplacian(model, X, batched=True)
    before = len(asked)
    for _ in range(3):
        torch.testing.assert_close(hv.laplacian(model, X, batched=True), first, rtol=0, atol=0)
    assert len(asked) - before == 1  # the plan's runner asked once, then remembered
    torch.testing.assert_close(first, hv.laplacian(model, X, batched=True, method="func"))


@pytest.mark.parametrize("op, rows", [("laplacian", 4), ("diagonal", 2), ("hvp", 8)])
def test_chunks_hold_about_chunk_bytes(op, rows):
    """2 → 64 ×4 → 1, float64, 4096 samples: ``rows`` per sample × 64 × 8 bytes, in equal
    chunks of at most CHUNK_BYTES (rounded up to a sample; float32: four times the bytes); one
    chunk on another device."""
    model = hv.mlp([2, 64, 64, 64, 64, 1], "tanh", seed=0)
    X = torch.zeros(4096, 2, dtype=D)
    ch = _chain_of(model, X, op)[1]
    step = chain.chunk_size(op, ch, X, 1)
    per_sample = rows * 64 * 8
    chunks = -(-4096 * per_sample // chain.CHUNK_BYTES)
    assert step == -(-4096 // chunks) and (step - 1) * per_sample < chain.CHUNK_BYTES
    assert chain.chunk_size(op, ch, X[:8], 1) == 8
    assert chain.chunk_size(op, ch, X.to("meta"), 1) == 4096
    chunks32 = -(-4096 * per_sample // 2 // (4 * chain.CHUNK_BYTES))  # float32: 4x the bytes
    assert chain.chunk_size(op, ch, X.float(), 1) == -(-4096 // chunks32)


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_the_laplacian_row_by_row_and_by_reduction_agree(n, monkeypatch):
    """Few inputs square and sum the Jacobian one row at a time (``ROW_BY_ROW``); both
    ways give torch.func's Laplacian, through three hidden layers."""
    model = hv.mlp([n, 7, 5, 6, 2], "tanh", seed=n)
    X = torch.randn(5, n, dtype=D, generator=torch.Generator().manual_seed(n))
    p, ch = _chain_of(model, X, "laplacian")
    ref = hv.laplacian(model, X, batched=True, method="func")
    for limit in (0, 8):  # never row by row, always
        monkeypatch.setattr(chain, "ROW_BY_ROW", limit)
        with torch.no_grad():
            got = chain.laplacian(ch, p.X, p.sel)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
