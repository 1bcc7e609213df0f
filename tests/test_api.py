"""Shapes, output selection, batching, dtypes, side effects, memory budget, FD and Hutchinson."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import hessviz as hv

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture
def model():
    return hv.mlp([4, 6, 3], "tanh", seed=1)


@pytest.fixture
def X():
    return torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("outputs", "flat", "shape"),
    [
        (None, False, (3, 4, 4)),
        (1, False, (4, 4)),
        (-1, False, (4, 4)),
        ([0, 2], False, (2, 4, 4)),
        ([2], False, (1, 4, 4)),
        (None, True, (3, 4, 4)),
        (1, True, (4, 4)),
        ([0, 2], True, (2, 4, 4)),
    ],
)
def test_output_selection_shapes_and_values(model, X, outputs, flat, shape):
    H = hv.hessian(model, X[0], outputs=outputs, flat=flat)
    assert H.shape == shape
    full = torch.func.hessian(model)(X[0])
    expected = full[outputs] if outputs is not None else full
    torch.testing.assert_close(H, expected.reshape(shape), **TOL)


def test_shape_contract_for_every_function(model, X):
    x = X[0]
    assert hv.hvp(model, x, x).shape == (3, 4)
    assert hv.hessian_diagonal(model, x).shape == (3, 4)
    assert hv.laplacian(model, x).shape == (3,)
    assert hv.fd_hessian(model, x).shape == (3, 4, 4)
    assert hv.fd_diagonal(model, x, outputs=0).shape == (4,)
    assert hv.hutchinson_diagonal(model, x, outputs=[0, 1]).shape == (2, 4)
    assert hv.hessian(model, X, batched=True).shape == (5, 3, 4, 4)
    assert hv.hessian(model, X, batched=True, outputs=0, flat=True).shape == (5, 4, 4)
    assert hv.laplacian(model, X, batched=True, outputs=[1]).shape == (5, 1)


def test_image_shaped_input_and_multi_dim_output():
    W = torch.randn(2, 3, 6, dtype=F64, generator=torch.Generator().manual_seed(2))

    def f(x):  # (2, 3) input → (2, 3) output
        return torch.tanh(torch.einsum("ijk,k->ij", W, x.reshape(6)))

    x = torch.randn(2, 3, dtype=F64)
    assert hv.hessian(f, x).shape == (2, 3, 2, 3, 2, 3)
    assert hv.hessian(f, x, flat=True).shape == (6, 6, 6)
    assert hv.hessian(f, x, outputs=4).shape == (2, 3, 2, 3)


def test_scalar_output_flat_drops_m():
    x = torch.ones(3, dtype=F64)
    assert hv.hessian(lambda x: (x**3).sum(), x, flat=True).shape == (3, 3)


def test_batched_equals_stacked_single_point_calls(model, X):
    H = hv.hessian(model, X, batched=True)
    torch.testing.assert_close(H, torch.stack([hv.hessian(model, x) for x in X]), **TOL)
    D = hv.hessian_diagonal(model, X, batched=True)
    torch.testing.assert_close(D, torch.stack([hv.hessian_diagonal(model, x) for x in X]), **TOL)


def test_float32_matches_float64():
    m64 = hv.mlp([3, 16, 16, 2], "softplus", seed=4)
    m32 = hv.mlp([3, 16, 16, 2], "softplus", seed=4, dtype=torch.float32)
    x = torch.randn(7, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    H64 = hv.hessian(m64, x, batched=True)
    H32 = hv.hessian(m32, x.float(), batched=True)
    assert H32.dtype == torch.float32
    torch.testing.assert_close(H32.double(), H64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("act", ["relu", "linear"])
def test_piecewise_linear_models_give_exact_zeros(act, X):
    model = hv.mlp([4, 8, 8, 3], act, seed=0)
    for method in ["auto", "loop", "autograd", "func", "structured"]:
        H = hv.hessian(model, X, batched=True, method=method)
        assert torch.equal(H, torch.zeros(5, 3, 4, 4, dtype=F64)), method
    assert torch.equal(hv.hessian_diagonal(model, X, batched=True), torch.zeros(5, 3, 4, dtype=F64))


def test_maxpool_cnn_and_constant_outputs_give_zeros():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8, 2)).double()  # fmt: skip
    x = torch.randn(1, 1, 6, 6, dtype=F64)
    assert torch.equal(hv.hessian(net, x), torch.zeros(1, 2, 1, 1, 6, 6, 1, 1, 6, 6, dtype=F64))
    const = hv.hessian(lambda x: torch.ones(2, dtype=x.dtype), torch.ones(3, dtype=F64))
    assert torch.equal(const, torch.zeros(2, 3, 3, dtype=F64))
    for method in ("loop", "autograd", "func"):
        got = hv.hessian(lambda x: x.sum() * 0 + 1.0, torch.ones(3, dtype=F64), method=method)
        assert torch.equal(got, torch.zeros(3, 3, dtype=F64))


def _snapshot(model, x):
    return (
        [p.detach().clone() for p in model.parameters()],
        [p.requires_grad for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        model.training,
        x.detach().clone(),
        x.requires_grad,
    )


def _same(a, b):
    (pa, ra, ga, ta, xa, xra), (pb, rb, gb, tb, xb, xrb) = a, b
    return (
        all(torch.equal(u, v) for u, v in zip(pa, pb))
        and ra == rb
        and all((u is None and v is None) or torch.equal(u, v) for u, v in zip(ga, gb))
        and ta == tb
        and torch.equal(xa, xb)
        and xra == xrb
    )


@pytest.mark.parametrize("method", ["auto", "loop", "autograd", "func", "structured"])
def test_no_side_effects(method):
    model = hv.mlp([3, 5, 2], "tanh", seed=0)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    model[2].bias.requires_grad_(False)
    x = torch.randn(4, 3, dtype=F64).requires_grad_(True)
    before = _snapshot(model, x)
    hv.hessian(model, x, batched=True, method=method)
    hv.hvp(model, x, x.detach(), batched=True, method=method)
    hv.hessian_diagonal(model, x, batched=True, method=method)
    hv.fd_hessian(model, x, batched=True)
    hv.hutchinson_diagonal(model, x, batched=True, samples=3)
    with pytest.raises(hv.HessvizError):
        hv.hessian(model, x, batched=True, outputs=9, method=method)
    assert _same(before, _snapshot(model, x))
    assert x.grad is None


def test_inside_no_grad_and_inference_mode(model, X):
    expected = hv.hessian(model, X, batched=True)
    with torch.no_grad():
        torch.testing.assert_close(hv.hessian(model, X, batched=True), expected, **TOL)
    with torch.inference_mode():
        Xi = X.clone()  # an inference tensor
        torch.testing.assert_close(hv.hessian(model, Xi, batched=True), expected, **TOL)
        torch.testing.assert_close(
            hv.fd_diagonal(model, Xi, batched=True),
            torch.diagonal(expected, dim1=-2, dim2=-1),
            rtol=1e-6,
            atol=1e-6,
        )


def test_memory_budget_refuses_huge_results_before_allocating():
    x = torch.zeros(40_000, dtype=F64)
    with pytest.raises(hv.HessvizError, match=r"11\.9 GiB.*outputs=.*hessian_diagonal.*hvp"):
        hv.hessian(lambda x: (x**3).sum(), x)
    net = hv.mlp([40_000, 8, 1], "tanh")
    with pytest.raises(hv.HessvizError, match=r"11\.9 GiB"):
        hv.hessian(net, x)
    # Its diagonal and an HVP are cheap and allowed.
    assert hv.hessian_diagonal(net, x).shape == (1, 40_000)
    assert hv.hvp(net, x, x).shape == (1, 40_000)


@pytest.mark.parametrize("method", ["structured", "func", "loop"])
def test_tiny_budget_chunks_and_gives_the_same_answer(model, X, method):
    expected = hv.hessian(model, X, batched=True, method=method)
    with hv.memory_budget(6000):
        chunked = hv.hessian(model, X, batched=True, method=method)
    torch.testing.assert_close(chunked, expected, **TOL)
    assert hv.get_memory_budget() == 2 * 2**30


def test_budget_validation():
    with pytest.raises(hv.HessvizError, match="positive number of bytes"):
        hv.set_memory_budget(-1)


def test_finite_differences_agree_with_exact(model, X):
    H = hv.hessian(model, X, batched=True)
    torch.testing.assert_close(hv.fd_hessian(model, X, batched=True), H, rtol=1e-6, atol=1e-7)
    D = torch.diagonal(H, dim1=-2, dim2=-1)
    torch.testing.assert_close(hv.fd_diagonal(model, X, batched=True), D, rtol=1e-5, atol=1e-6)
    fd = hv.fd_hessian(model, X[0])
    assert torch.equal(fd, fd.transpose(-1, -2))


def test_fd_error_follows_the_step_tradeoff(model, X):
    """Too large a step: truncation error; too small: round-off; the default sits in between."""
    H = hv.hessian(model, X[0])

    def err(step):
        return float((hv.fd_hessian(model, X[0], step=step) - H).abs().max())

    default = err(None)
    assert default < err(1.0) and default < err(1e-8)
    assert err(1.0) > 1e-4 and err(1e-8) > 1e-4


def test_hutchinson_is_reproducible_unbiased_and_exact_for_diagonal_hessians(model, X):
    a = hv.hutchinson_diagonal(model, X, batched=True, samples=16, seed=3)
    assert torch.equal(a, hv.hutchinson_diagonal(model, X, batched=True, samples=16, seed=3))
    assert not torch.equal(a, hv.hutchinson_diagonal(model, X, batched=True, samples=16, seed=4))
    exact = hv.hessian_diagonal(model, X, batched=True)
    many = hv.hutchinson_diagonal(model, X, batched=True, samples=4000, seed=0)
    few = hv.hutchinson_diagonal(model, X, batched=True, samples=4, seed=0)
    assert (many - exact).abs().max() < (few - exact).abs().max()
    assert (many - exact).abs().max() < 0.1 * exact.abs().max()
    x = torch.randn(6, dtype=F64)
    torch.testing.assert_close(
        hv.hutchinson_diagonal(lambda x: torch.sin(x).sum(), x, samples=1), -torch.sin(x), **TOL
    )


def test_mlp_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = hv.mlp([2, 3, 1], seed=5), hv.mlp([2, 3, 1], seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert set(hv.ACTIVATIONS) >= {"tanh", "sigmoid", "softplus", "elu", "gelu", "silu", "relu",
                                   "sin", "square", "linear"}  # fmt: skip


def test_methods_registry_describes_every_method():
    assert {"loop", "autograd", "func", "structured", "taylor"} <= set(hv.METHODS)
    for name, m in hv.METHODS.items():
        assert m.name == name and m.description and m.computes
    assert "hessian" not in hv.METHODS["taylor"].computes


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_compute_layer_imports_no_plotting_or_widgets():
    code = (
        "import sys, hessviz; [getattr(hessviz, name) for name in hessviz.__all__]; "
        "print(any(m in sys.modules for m in ('plotly', 'ipywidgets')))"
    )
    assert _run(code) == "False"


def test_import_hessviz_leaves_torch_for_first_use():
    """The dashboard's servers import ``hessviz.serve`` and never compute: no torch for them."""
    code = "import sys, hessviz, hessviz.serve; print('torch' in sys.modules)"
    assert _run(code) == "False"
    code = "import sys, hessviz; hessviz.hessian; print('torch' in sys.modules)"
    assert _run(code) == "True"


def test_every_public_name_resolves_to_its_submodules_object():
    from hessviz import api, models, registry

    assert all(getattr(hv, name) is not None for name in hv.__all__)
    assert hv.hessian is api.hessian and hv.mlp is models.mlp and hv.METHODS is registry.METHODS
    assert set(hv.__all__) <= set(dir(hv))
    with pytest.raises(AttributeError, match="no attribute 'hesian'"):
        hv.hesian  # noqa: B018 - a typo still fails as usual


def test_auto_picks_structured_for_small_mlps_and_generic_otherwise(model, X):
    assert hv.auto_method(model, X, batched=True) == "structured"
    assert hv.auto_method(model, X, batched=True, op="diagonal") == "structured"
    assert hv.auto_method(lambda x: x.sin().sum(), X[0]) in ("graph", "func")  # by cost
    # never forward-over-forward (taylor): PyTorch gets it wrong for some ops
    assert hv.auto_method(lambda x: x.sin().sum(), X[0], op="laplacian") == "graph"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("method", ["auto", "loop", "autograd", "func", "structured"])
def test_cuda_results_stay_on_the_device_and_match_cpu(method):
    model, X = hv.mlp([3, 8, 2], "tanh", seed=0), torch.randn(4, 3, dtype=F64)
    expected = hv.hessian(model, X, batched=True, method=method)
    got = hv.hessian(model.cuda(), X.cuda(), batched=True, method=method)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, **TOL)
    for fn in (hv.hessian_diagonal, hv.laplacian, hv.fd_diagonal, hv.hutchinson_diagonal):
        assert fn(model, X.cuda(), batched=True).device.type == "cuda"
    assert hv.hvp(model, X.cuda(), X.cuda(), batched=True).device.type == "cuda"
