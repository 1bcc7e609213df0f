"""Checks shared by the explorer's tests: every panel against a fresh engine computation.

Used by test_explorer.py (fixed views) and test_explorer_walk.py (random walks).
"""

from __future__ import annotations

import numpy as np
import torch

import hessviz as hv
from hessviz.widgets import ExplorerState, HessianExplorer
from hessviz.widgets.compute import DEFAULT_THREADS, torch_threads

#: Round-off allowed between a panel and the engine, relative to the largest expected entry. The
#: explorer computes every output at once, the check one output: in float32, deep ``square``
#: networks (intermediate values ~1e3) then differ by up to ~100 ulps. A stale or wrong panel
#: differs by O(1).
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}


def engine_model(state: ExplorerState) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model and point of ``state``, built directly from the engine."""
    model = hv.mlp(state.sizes, state.act, seed=state.seed, dtype=torch.float64)
    dtype = {"float64": torch.float64, "float32": torch.float32}[state.dtype]
    return model.to(dtype), torch.tensor(state.x, dtype=dtype)


def close(shown, expected, dtype: str = "float64", scale: float = 0.0) -> None:
    """Equal up to round-off at the scale of ``expected`` (or ``scale``, if larger).

    The absolute tolerance grows with ``max|expected|``: deep ``square`` networks reach entries of
    1e9 next to entries near zero, and two exact routes (all outputs at once or one; eigenvalues
    from another copy) then differ by ε·scale, far above any fixed per-entry tolerance. A part
    of a larger sum (a layer term) carries the round-off of the whole: pass the sum's scale.
    """
    expected = np.asarray(expected.detach() if torch.is_tensor(expected) else expected)
    tol = TOLERANCE[dtype]
    scale = max(1.0, scale, float(np.nanmax(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(np.asarray(shown), expected, rtol=tol, atol=tol * scale)


def assert_figures_match_engine(app: HessianExplorer) -> None:
    """Every panel against a fresh engine computation for the same model and point.

    Computed with the explorer's torch thread count: another count sums wide matrix products in
    another order, and finite differences amplify that last-bit difference by 1/h².
    """
    with torch_threads(DEFAULT_THREADS):
        _assert_figures_match_engine(app)


def _assert_figures_match_engine(app: HessianExplorer) -> None:
    s = app.state
    model, x = engine_model(s)
    out, figs = s.out, app.figures
    H = hv.hessian(model, x, outputs=out, method=s.method)
    # The explorer evaluates FD as a batch of one (faster); round-off then differs from the
    # unbatched call in the last bits, which FD amplifies by 1/h²: compare like with like.
    FD = hv.fd_hessian(model, x[None], step=s.step, outputs=out, batched=True)[0]
    close(figs["hessian"].data[0].z, H, s.dtype)
    close(figs["hessian"].data[1].z, FD, s.dtype)
    # The gap is the difference of the two panels just checked (each within round-off of the
    # engine; their difference can be far smaller than either, so compare it with theirs).
    exact, fd, gap = (figs["hessian"].data[i] for i in range(3))
    shown_gap = np.abs(np.asarray(exact.z) - np.asarray(fd.z))
    close(gap.customdata, shown_gap, "float64")
    diag = figs["diagonal"].data
    close(diag[0].z, hv.hessian_diagonal(model, x, flat=True, method=s.method), s.dtype)
    close(
        diag[1].z, hv.fd_diagonal(model, x[None], step=s.step, flat=True, batched=True)[0], s.dtype
    )
    close(diag[2].z, hv.hutchinson_diagonal(model, x, samples=s.samples, flat=True), s.dtype)
    H64 = H.detach().to(torch.float64).numpy()
    close(figs["spectrum"].data[0].y, np.linalg.eigvalsh(H64), s.dtype)
    terms = hv.layer_terms(model, x, outputs=out)
    layer_traces = [t for t in figs["layers"].data if t.type == "heatmap"]  # not the diagram
    shares = [t for t in figs["layers"].data if t.name == "network"]
    assert len(shares) == 1  # the network picture is drawn beside the terms
    if terms:
        assert len(layer_traces) == len(terms) + 2
        whole = float(H.abs().max())
        for trace, term in zip(layer_traces, terms):
            close(trace.z, term.hessian, s.dtype, scale=whole)
        close(layer_traces[-2].z, sum(t.hessian for t in terms), s.dtype)  # Σ terms
        close(layer_traces[-1].z, H, s.dtype)
        close(layer_traces[-2].z, layer_traces[-1].z, s.dtype)  # the sum check itself
    else:
        assert [t.name for t in layer_traces] == ["H"]
