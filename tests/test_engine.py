"""Every method against one trusted float64 reference and against closed forms."""

import pytest
import torch

import hessviz as hv

TOL = dict(rtol=1e-10, atol=1e-10)
HESSIAN_METHODS = [k for k, m in hv.METHODS.items() if "hessian" in m.computes]
DIAGONAL_METHODS = [k for k, m in hv.METHODS.items() if "diagonal" in m.computes]
HVP_METHODS = [k for k, m in hv.METHODS.items() if "hvp" in m.computes]


def _flat(H, x, batched):
    """Reference ``S_out + S_in + S_in`` → ``(B, M, n, n)``."""
    B = x.shape[0] if batched else 1
    n = x[0].numel() if batched else x.numel()
    return H.reshape(B, -1, n, n)


def _unsupported(method, case, call):
    """True (after checking the clear refusal) when the layer-wise engine does not apply."""
    if method == "auto" or not hv.METHODS[method].needs_structure or case.structured:
        return False
    with pytest.raises(hv.HessvizError, match="method='func'"):
        call()
    return True


@pytest.mark.parametrize("method", ["auto", *HESSIAN_METHODS])
def test_hessian_matches_reference(problem, case, method):
    f, x, batched, H_ref = problem
    if _unsupported(method, case, lambda: hv.hessian(f, x, batched=batched, method=method)):
        return
    H = hv.hessian(f, x, batched=batched, method=method)
    assert H.shape == H_ref.shape and H.dtype == x.dtype
    torch.testing.assert_close(H, H_ref, **TOL)


@pytest.mark.parametrize("method", ["auto", *DIAGONAL_METHODS])
def test_diagonal_and_laplacian_match_reference(problem, case, method):
    f, x, batched, H_ref = problem
    if _unsupported(method, case, lambda: hv.laplacian(f, x, batched=batched, method=method)):
        return
    D_ref = torch.diagonal(_flat(H_ref, x, batched), dim1=-2, dim2=-1)
    D = hv.hessian_diagonal(f, x, batched=batched, method=method, flat=True)
    torch.testing.assert_close(D.reshape(D_ref.shape), D_ref, **TOL)
    L = hv.laplacian(f, x, batched=batched, method=method)
    torch.testing.assert_close(L.reshape(-1), D_ref.sum(-1).reshape(-1), **TOL)


@pytest.mark.parametrize("method", ["auto", *HVP_METHODS])
def test_hvp_matches_reference(problem, case, method):
    f, x, batched, H_ref = problem
    if _unsupported(method, case, lambda: hv.hvp(f, x, x, batched=batched, method=method)):
        return
    v = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    Hf = _flat(H_ref, x, batched)
    expected = Hf @ v.reshape(Hf.shape[0], 1, -1, 1)
    R = hv.hvp(f, x, v, batched=batched, method=method, flat=True)
    torch.testing.assert_close(R.reshape(expected.shape[:-1]), expected[..., 0], **TOL)


def test_closed_forms(case):
    if case.closed_form is None:
        pytest.skip("no closed form for this case")
    f, x, batched = case.build()
    torch.testing.assert_close(hv.hessian(f, x, batched=batched), case.closed_form(x), **TOL)


def test_layer_terms_sum_to_hessian(problem, case):
    """Per-node terms (activation layers, or the graph engine's curvature nodes) sum to H."""
    f, x, batched, H_ref = problem
    terms = hv.layer_terms(f, x, batched=batched)
    assert all(t.hessian.shape == H_ref.shape for t in terms)
    total = sum((t.hessian for t in terms), torch.zeros_like(H_ref))
    torch.testing.assert_close(total, H_ref, **TOL)
    if not terms:  # no activation layer at all: an affine network
        assert torch.equal(H_ref, torch.zeros_like(H_ref))


def test_structured_refuses_generic_functions_clearly():
    with pytest.raises(hv.HessvizError, match="method='func'"):
        hv.hessian(lambda x: x.sin().sum(), torch.ones(3), method="structured")


# --- the questions from the forum threads ---------------------------------------------------


def test_seed_flux_second_order_jacobian():
    """Chain(Dense(5,3,elu), Dense(3,3)): d²y_i/dx_j² for every i, j, as a 3×5 matrix."""
    from cases import flux_chain

    model, x = flux_chain(), torch.linspace(-1, 1, 5, dtype=torch.float64)
    D = hv.hessian_diagonal(model, x)
    H = torch.func.hessian(model)(x)
    assert D.shape == (3, 5)
    torch.testing.assert_close(D, torch.diagonal(H, dim1=-2, dim2=-1), **TOL)


def test_seed_linear_model_gives_zeros_not_errors():
    """The thread's Linear(4, 1): prediction Hessian is zero, squared loss gives 2wwᵀ."""
    model = torch.nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.fill_(0.5)
        model.bias.fill_(0.5)
    x, y = torch.ones(4), torch.tensor([1.0])
    for method in HESSIAN_METHODS:
        if method == "structured":
            continue
        assert torch.equal(hv.hessian(model, x, method=method), torch.zeros(1, 4, 4))
    assert torch.equal(hv.hessian(model, x, outputs=0), torch.zeros(4, 4))
    loss_h = hv.hessian(lambda x: ((y - model(x)) ** 2).sum(), x)
    torch.testing.assert_close(loss_h, torch.full((4, 4), 0.5))  # 2 · 0.5 · 0.5


def test_seed_nll_of_logsoftmax_mlp():
    from cases import _nll_mlp

    f, x, _ = _nll_mlp()
    H = hv.hessian(f, x)
    assert H.shape == (1, 5, 1, 5)
    torch.testing.assert_close(H, torch.autograd.functional.hessian(f, x), **TOL)


@pytest.mark.slow
def test_seed_mnist_cnn_784x784():
    """hv.hessian(cnn, x, outputs=2, flat=True) → (784, 784), checked against torch.func and FD."""
    from cases import mnist_cnn

    cnn = mnist_cnn()
    x = torch.rand(1, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    H = hv.hessian(cnn, x, outputs=2, flat=True, method="structured")
    assert H.shape == (784, 784)
    torch.testing.assert_close(hv.hessian(cnn, x, outputs=2, flat=True), H, **TOL)
    torch.testing.assert_close(H, H.T, **TOL)
    pixels = torch.tensor([100, 350, 351, 600])

    def score(x):
        return cnn(x)[0, 2]

    def hessian_row(j):  # reference: one autograd HVP along pixel j
        e = torch.nn.functional.one_hot(j, 784).reshape(x.shape).double()
        return torch.autograd.functional.hvp(score, x, e)[1].reshape(-1)

    ref_rows = torch.stack([hessian_row(j) for j in pixels])
    torch.testing.assert_close(H[pixels], ref_rows, **TOL)

    # Finite differences on a 4-pixel sub-block: f restricted to those pixels.
    def sub(z):
        return score(x.reshape(-1).index_add(0, pixels, z).reshape(x.shape))

    fd = hv.fd_hessian(sub, torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(fd, H[pixels][:, pixels], rtol=1e-5, atol=1e-6)
    D = hv.hessian_diagonal(cnn, x, outputs=2)
    assert D.shape == (1, 1, 28, 28)
    torch.testing.assert_close(D.reshape(-1), torch.diagonal(H), **TOL)
