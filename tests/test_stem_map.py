"""The affine stem's Jacobian (and the Laplacian's Gram ``A_Tᵀ A_T``) is kept between calls
(:func:`hessviz.structured.kernels._stem_map`) — and never used once the stem has changed.

Every way a user changes a first layer is tried between two calls: an optimizer-style in-place
update, a ``.data`` write (which leaves the version counter alone), a replaced parameter, a
changed setting of a normalisation layer in the stem; each answer must equal the float64
reference on the model as it is now.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hessviz as hv
from hessviz.structured import kernels

D = torch.float64
OPS = {
    "hessian": lambda f, X: hv.hessian(f, X, batched=True, method="structured"),
    "diagonal": lambda f, X: hv.hessian_diagonal(f, X, batched=True, method="structured"),
    "laplacian": lambda f, X: hv.laplacian(f, X, batched=True, method="structured"),
}
REFERENCE = {
    "hessian": lambda f, X: hv.hessian(f, X, batched=True, method="func"),
    "diagonal": lambda f, X: hv.hessian_diagonal(f, X, batched=True, method="func"),
    "laplacian": lambda f, X: hv.laplacian(f, X, batched=True, method="func"),
}


def _narrowing(seed: int = 0) -> nn.Module:
    """12 inputs into a 5-wide first layer (Jacobians carried in z_1, ``P`` maps back)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2))


def _normalised(seed: int = 0) -> nn.Module:
    """A stem of two affine layers: Linear, then BatchNorm in eval mode."""
    torch.manual_seed(seed)
    bn = nn.BatchNorm1d(5)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    net = nn.Sequential(nn.Linear(12, 5), bn, nn.Tanh(), nn.Linear(5, 2))
    return net.eval()


def _conv(seed: int = 0) -> nn.Module:
    """A convolutional stem on 1×6×6 images (the stem map is the conv applied to a basis)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Tanh(), nn.Linear(32, 3), nn.Tanh(), nn.Linear(3, 2)
    )


def _check(op, model, X, after="the first call"):
    torch.testing.assert_close(
        OPS[op](model, X),
        REFERENCE[op](model, X),
        rtol=1e-9,
        atol=1e-11,
        msg=lambda m: f"{op} after {after}: {m}",
    )


def _edits(model):
    first = model[0]
    yield "in-place update", lambda: first.weight.data.add_(0.1)  # like optimizer.step
    yield ".data write", lambda: first.weight.data.mul_(-1.5)
    yield "one entry", lambda: first.weight.data.view(-1)[3].add_(0.25)
    yield "bias", lambda: first.bias.data.add_(0.3)  # the bias is not in the map: still exact
    yield (
        "replaced parameter",
        lambda: setattr(first, "weight", nn.Parameter(torch.randn_like(first.weight))),
    )


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("make", [_narrowing, _conv], ids=["narrowing-mlp", "conv"])
def test_every_edit_of_the_stem_is_seen(op, make):
    model = make().double()
    S = (12,) if make is _narrowing else (1, 6, 6)
    X = torch.randn(3, *S, dtype=D, generator=torch.Generator().manual_seed(1))
    _check(op, model, X)
    _check(op, model, X)  # served from the kept map
    for what, edit in _edits(model):
        edit()
        _check(op, model, X, after=what)


def test_a_changed_setting_in_the_stem_is_seen():
    model = _normalised().double()
    X = torch.randn(4, 12, dtype=D, generator=torch.Generator().manual_seed(2))
    _check("laplacian", model, X)
    model[1].eps = 0.5  # a plain attribute: no tensor changes
    _check("laplacian", model, X)
    model[1].running_var.data.mul_(3.0)  # a buffer
    _check("laplacian", model, X)


def test_the_map_is_kept_while_nothing_changes_and_rebuilt_after():
    model = _narrowing().double()
    X = torch.randn(3, 12, dtype=D)
    hv.laplacian(model, X, batched=True, method="structured")
    kept = kernels._STEM_MAPS[model[0]]
    assert kept.factored is not None  # the (chain) Laplacian asked for the first layer's rows
    hv.laplacian(model, X, batched=True, method="structured")
    assert kernels._STEM_MAPS[model[0]] is kept
    model[0].weight.data.mul_(2.0)
    hv.laplacian(model, X, batched=True, method="structured")
    assert kernels._STEM_MAPS[model[0]] is not kept
    torch.testing.assert_close(kernels._STEM_MAPS[model[0]].A_T, model[0].weight.T)


def test_kernels_never_write_the_kept_map():
    """The kept ``A_T``, Gram and factor are read by every later call: after the three ops they
    still equal the first layer's weight, its Gram and a factor of it."""
    model = _narrowing().double()
    X = torch.randn(3, 12, dtype=D)
    for op in OPS:
        OPS[op](model, X)
        OPS[op](model, X)
    kept = kernels._STEM_MAPS[model[0]]
    W = model[0].weight.detach()
    torch.testing.assert_close(kept.A_T, W.T, rtol=0, atol=0)
    torch.testing.assert_close(kept.gram(), W @ W.T)
    R, norms = kept.factor()
    torch.testing.assert_close(R.T @ R, W @ W.T)
    torch.testing.assert_close(norms, (W * W).sum(1))


def test_a_map_larger_than_the_budget_allows_is_not_kept():
    model = _narrowing().double()
    X = torch.randn(3, 12, dtype=D)
    with hv.memory_budget(16 * 8 * 12 * 5):  # a sixteenth is less than A_T and the copies
        got = OPS["laplacian"](model, X)
    assert model[0] not in kernels._STEM_MAPS
    torch.testing.assert_close(got, REFERENCE["laplacian"](model, X), rtol=1e-9, atol=1e-11)


def test_one_changed_element_anywhere_in_the_stem_is_seen():
    """The stem is compared by its bytes (``memcmp``): a change in the last byte's element, a
    sign flip of zero, a column-major copy of the same values."""
    model = _narrowing().double()
    X = torch.randn(3, 12, dtype=D)
    _check("laplacian", model, X)
    kept = kernels._STEM_MAPS[model[0]]
    with torch.no_grad():
        model[0].weight.data[-1, -1] += 1e-12  # the very last element
    _check("laplacian", model, X, "a change in the last element")
    assert kernels._STEM_MAPS[model[0]] is not kept
    with torch.no_grad():
        model[0].weight.data = model[0].weight.data.t().contiguous().t()  # same values, strided
    _check("laplacian", model, X, "a column-major weight")


def test_same_bytes_answers_only_what_it_can_compare():
    from hessviz._memory import same_bytes

    a = torch.randn(7, 5, dtype=D)
    assert same_bytes(a, a.clone()) is True
    b = a.clone()
    b[6, 4] = -b[6, 4]
    assert same_bytes(a, b) is False
    assert same_bytes(torch.zeros(3), -torch.zeros(3)) is False  # equal values, other bytes
    assert same_bytes(a, a.t().contiguous().t()) is None  # strided: torch.equal decides
    assert same_bytes(a, a.float()) is None
    assert same_bytes(a[:0], a[:0].clone()) is True
    assert same_bytes(nn.Parameter(a), a.clone()) is True
