"""Property tests over random MLPs: invariants every method must satisfy.

Documented tolerances: float64 methods agree to 1e-9 (relative to the Hessian's scale); float32
results agree with float64 to 2e-3 of the scale; central FD with the default step
``h = eps^(1/4)`` has error ``O(h²·f'''' + eps·|f|/h²) = O(√eps)``, checked as 1e-5 of the scale.
"""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hessviz as hv
from hessviz import ops

SMOOTH = [a.name for a in ops.ACTIVATIONS.values() if not a.piecewise_linear]
PIECEWISE_LINEAR = [a.name for a in ops.ACTIVATIONS.values() if a.piecewise_linear]
EXACT = ["loop", "autograd", "func", "structured", "graph"]
PROFILE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def networks(draw, activations=(*SMOOTH, *PIECEWISE_LINEAR)):
    n = draw(st.integers(1, 5))
    hidden = draw(st.lists(st.integers(1, 8), min_size=0, max_size=3))
    m = draw(st.integers(1, 3))
    act = draw(st.sampled_from(activations))
    seed = draw(st.integers(0, 2**16))
    B = draw(st.integers(1, 4))
    scale = draw(st.sampled_from([0.1, 1.0, 2.5]))
    gen = torch.Generator().manual_seed(seed)
    X = scale * torch.randn(B, n, dtype=torch.float64, generator=gen)
    return hv.mlp([n, *hidden, m], act, seed=seed), X, [n, *hidden, m], act, seed


def _scale(H):
    return 1.0 + float(H.detach().abs().max())


@PROFILE
@given(networks())
def test_all_methods_agree_and_hessians_are_symmetric(net):
    model, X, *_ = net
    ref = torch.stack([torch.func.hessian(model)(x) for x in X])
    tol = 1e-9 * _scale(ref)
    for method in ["auto", *EXACT]:
        H = hv.hessian(model, X, batched=True, method=method)
        assert (H - ref).abs().max() <= tol, method
        assert torch.equal(H, H.transpose(-1, -2)) or (H - H.transpose(-1, -2)).abs().max() <= tol


@PROFILE
@given(networks(), st.data())
def test_hvp_diagonal_and_laplacian_are_consistent_with_the_hessian(net, data):
    model, X, *_ = net
    B, n = X.shape
    H = hv.hessian(model, X, batched=True)
    tol = 1e-9 * _scale(H)
    j = data.draw(st.integers(0, n - 1))
    e = torch.zeros_like(X)
    e[:, j] = 1
    for method in ["auto", "structured", "graph", "func"]:
        col = hv.hvp(model, X, e, batched=True, method=method)
        assert (col - H[..., j]).abs().max() <= tol  # hvp(e_j) = column j
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 100)))
    u, w = torch.randn(2, B, n, dtype=X.dtype, generator=gen)
    a, b = data.draw(st.floats(-3, 3)), data.draw(st.floats(-3, 3))
    lhs = hv.hvp(model, X, a * u + b * w, batched=True)
    rhs = a * hv.hvp(model, X, u, batched=True) + b * hv.hvp(model, X, w, batched=True)
    assert (lhs - rhs).abs().max() <= 10 * tol * (1 + abs(a) + abs(b))  # linear in v
    D = hv.hessian_diagonal(model, X, batched=True)
    assert (D - torch.diagonal(H, dim1=-2, dim2=-1)).abs().max() <= tol
    L = hv.laplacian(model, X, batched=True)
    assert (L - torch.diagonal(H, dim1=-2, dim2=-1).sum(-1)).abs().max() <= n * tol


@PROFILE
@given(networks())
def test_batched_equals_stacked_single_point_calls(net):
    model, X, *_ = net
    H = hv.hessian(model, X, batched=True)
    single = torch.stack([hv.hessian(model, x) for x in X])
    assert (H - single).abs().max() <= 1e-12 * _scale(H)


@PROFILE
@given(networks(activations=SMOOTH))
def test_float32_close_to_float64(net):
    model, X, sizes, act, seed = net
    H64 = hv.hessian(model, X, batched=True)
    model32 = hv.mlp(sizes, act, seed=seed, dtype=torch.float32)
    H32 = hv.hessian(model32, X.float(), batched=True)
    assert H32.dtype == torch.float32
    assert (H32.double() - H64).abs().max() <= 2e-3 * _scale(H64)


@PROFILE
@given(networks(activations=SMOOTH))
def test_fd_error_within_the_predicted_bound(net):
    model, X, *_ = net
    H = hv.hessian(model, X, batched=True)
    fd = hv.fd_hessian(model, X, batched=True)
    y = model(X).detach()
    assert (fd - H).abs().max() <= 1e-5 * (_scale(H) + float(y.abs().max()))


@PROFILE
@given(networks(activations=tuple(PIECEWISE_LINEAR)))
def test_piecewise_linear_networks_have_zero_curvature(net):
    model, X, *_ = net
    for method in ["auto", *EXACT]:
        assert not hv.hessian(model, X, batched=True, method=method).any()
    assert all(not t.hessian.any() for t in hv.layer_terms(model, X, batched=True))
