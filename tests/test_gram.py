"""The full Hessian's assembly on upper panels (:mod:`hessviz.structured.gram`).

``Σ_l G_l diag(c_l) G_lᵀ`` for every kind of ``G`` (identity, shared, per sample), any order of
terms, one output or many, and matrices with one panel or several, against a plain float64
``einsum``; and the models whose Hessians go through the panels against torch.func.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hessviz as hv
from hessviz.structured.gram import Gram, panel_edges

D = torch.float64


def _reference(terms, B, m, r):
    H = torch.zeros(B, m, r, r, dtype=D)
    for G, c in terms:
        if G is None:
            H += torch.diag_embed(c)
        elif G.ndim == 2:
            H += torch.einsum("jk,bik,lk->bijl", G, c, G)
        else:
            H += torch.einsum("bjk,bik,blk->bijl", G, c, G)
    return H


@pytest.mark.parametrize(
    "r, m, panels", [(10, 3, 1), (32, 3, 2), (64, 10, 8), (64, 1, 1), (128, 10, 16), (256, 1, 4)]
)
def test_panel_edges(r, m, panels):
    edges = panel_edges(r, m)
    assert len(edges) == panels + 1 and edges[0] == 0 and edges[-1] == r
    assert all(e - a >= 8 for a, e in zip(edges[:-1], edges[1:])) or panels == 1


@settings(max_examples=60, deadline=None)
@given(
    r=st.integers(1, 70),
    m=st.integers(1, 4),
    B=st.integers(1, 3),
    kinds=st.lists(st.sampled_from(["identity", "shared", "per_sample"]), min_size=0, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_gram_equals_einsum(r, m, B, kinds, seed):
    gen = torch.Generator().manual_seed(seed)
    terms = []
    for kind in kinds:
        K = r if kind == "identity" else int(torch.randint(1, 40, (1,), generator=gen))
        G = {
            "identity": None,
            "shared": torch.randn(r, K, dtype=D, generator=gen),
            "per_sample": torch.randn(B, r, K, dtype=D, generator=gen),
        }[kind]
        terms.append((G, torch.randn(B, m, K, dtype=D, generator=gen)))
    gram = Gram(B, m, r, like=torch.empty(0, dtype=D))
    for G, c in terms:
        gram.add(G, c)
    H = gram.result()
    assert H.shape == (B, m, r, r)
    torch.testing.assert_close(H, _reference(terms, B, m, r), rtol=1e-12, atol=1e-12)
    edges = panel_edges(r, m)
    for a, e in zip(edges[:-1], edges[1:]):  # below the diagonal panels: mirrored, exactly
        assert torch.equal(H[..., e:, a:e], H[..., a:e, e:].mT)


@pytest.mark.parametrize(
    "sizes, B",
    [([64, 96, 96, 10], 3), ([128, 128, 128, 1], 2), ([200, 64, 64, 3], 2), ([40, 20, 20, 5], 2)],
    ids=["chain-10-outputs", "chain-1-output", "narrowing-stem", "narrowing-x-space"],
)
def test_hessians_through_panels_equal_torch_func(sizes, B):
    """Chains (Jacobians in ``x``) and narrowing stems (in ``z_1``, mapped back) with enough
    rows for several panels."""
    model = hv.mlp(sizes, "tanh", seed=sum(sizes))
    X = torch.randn(B, sizes[0], dtype=D, generator=torch.Generator().manual_seed(1))
    H = hv.hessian(model, X, batched=True, method="structured")
    R = hv.hessian(model, X, batched=True, method="func")
    torch.testing.assert_close(H, R, rtol=1e-10, atol=1e-12)
    assert len(panel_edges(sizes[0], sizes[-1])) > 2 or sizes[1] < sizes[0]
