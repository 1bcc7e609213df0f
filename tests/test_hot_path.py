"""Repeated calls: a plan an earlier call left is reused only while it is still right.

The second call of a public function on the same model and request skips validation of ``f``,
the engine's self-check and the method choice (:mod:`hessviz._hot`). Every change the request
key cannot see must still give the number a fresh model would give, or the full path's error.
"""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch
from torch import nn

import hessviz as hv
from hessviz import _hot

D = torch.float64


def _mlp(seed: int = 0, act: type = nn.Tanh) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 2)).to(D)


class Custom(nn.Module):
    """A hand-written forward the graph engine lowers to a chain of layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2 = nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def _reference(f, X, op, V=None):
    fresh = {"hessian": hv.hessian, "diagonal": hv.hessian_diagonal, "laplacian": hv.laplacian}
    if op == "hvp":
        return hv.hvp(f, X, V, batched=True, method="func")
    return fresh[op](f, X, batched=True, method="func")


def _call(f, X, op, V=None):
    if op == "hvp":
        return hv.hvp(f, X, V, batched=True)
    fns = {"hessian": hv.hessian, "diagonal": hv.hessian_diagonal, "laplacian": hv.laplacian}
    return fns[op](f, X, batched=True)


def _entry(f, op, X):
    return _hot.find(f, _hot.request_key(op, "auto", X, True, None))


@pytest.mark.parametrize("op", ["hessian", "diagonal", "laplacian", "hvp"])
def test_second_call_is_served_by_the_plan_and_exact(op):
    model = _mlp()
    X, V = torch.randn(5, 3, dtype=D), torch.randn(5, 3, dtype=D)
    first = _call(model, X, op, V)
    assert _entry(model, op, X) is not None  # the first call left its plan
    X2, V2 = torch.randn(5, 3, dtype=D), torch.randn(5, 3, dtype=D)
    torch.testing.assert_close(_call(model, X2, op, V2), _reference(model, X2, op, V2))
    torch.testing.assert_close(first, _reference(model, X, op, V))


def test_weights_changed_in_place_are_read_at_every_call():
    model, X = _mlp(), torch.randn(4, 3, dtype=D)
    hv.hessian(model, X, batched=True)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.7).add_(0.1)  # what an optimizer step does
    torch.testing.assert_close(hv.hessian(model, X, batched=True), _reference(model, X, "hessian"))


def test_a_swapped_layer_is_noticed():
    model, X = _mlp(), torch.randn(4, 3, dtype=D)
    hv.hessian(model, X, batched=True)
    model[1] = nn.Sigmoid()
    torch.testing.assert_close(hv.hessian(model, X, batched=True), _reference(model, X, "hessian"))
    model[3] = nn.Dropout(0.5)  # in training mode: the full path refuses it, in words
    with pytest.raises(hv.HessvizError, match="Dropout"):
        hv.hessian(model, X, batched=True)


def _narrowing(seed: int = 0) -> nn.Sequential:
    """A first layer narrower than the input: the general kernels carry Jacobians in z_1."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))


class _Residual(nn.Module):
    """A forward the graph engine runs (not a chain)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.fc1, self.fc2, self.head = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        return self.head(h + torch.tanh(self.fc2(h)))


def _served(kind: str, op: str):
    """``(model, X, V, last layer)`` of a ``kind`` model whose plan for ``op`` has served a call."""
    model = {"chain": _mlp, "narrowing": _narrowing, "graph": _Residual}[kind]().to(D)
    n = 12 if kind == "narrowing" else 3
    X, V = torch.randn(4, n, dtype=D), torch.randn(4, n, dtype=D)
    _call(model, X, op, V)
    _call(model, X, op, V)  # the plan serves it
    return model, X, V, model.head if kind == "graph" else model[4]


@pytest.mark.parametrize("op", ["hessian", "diagonal", "laplacian", "hvp"])
@pytest.mark.parametrize("how", ["new Parameter", ".data"])
@pytest.mark.parametrize("kind", ["chain", "narrowing", "graph"])
def test_a_last_layer_with_more_outputs_is_noticed(op, how, kind):
    """The same modules with a last layer of three outputs instead of two: every product of the
    old plan is still valid; the kernels compare the model's outputs with the request's."""
    model, X, V, last = _served(kind, op)
    gen = torch.Generator().manual_seed(4)
    K = last.weight.shape[1]
    W, b = torch.randn(3, K, dtype=D, generator=gen), torch.randn(3, dtype=D, generator=gen)
    if how == ".data":
        last.weight.data, last.bias.data = W, b
    else:
        last.weight, last.bias = nn.Parameter(W), nn.Parameter(b)
    got = _call(model, X, op, V)
    assert got.shape[1] == 3
    torch.testing.assert_close(got, _reference(model, X, op, V))


@pytest.mark.parametrize("op", ["hessian", "diagonal", "laplacian", "hvp"])
@pytest.mark.parametrize("how", ["new Parameter", ".data"])
@pytest.mark.parametrize("kind", ["chain", "narrowing", "graph"])
def test_a_last_bias_of_another_dtype_fails_as_on_a_fresh_call(op, how, kind):
    """No derivative reads the last layer's bias, but ``f`` fails with it in float32 on
    float64 inputs: a repeated call must raise the full path's error, as a fresh call does,
    not return the derivatives of a model that cannot run."""
    model, X, V, last = _served(kind, op)
    b = last.bias.detach().float()
    if how == ".data":
        last.bias.data = b
    else:
        last.bias = nn.Parameter(b)
    with pytest.raises(hv.HessvizError, match="dtype"):
        _call(model, X, op, V)


def test_a_mode_change_or_a_hook_sends_the_call_down_the_full_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Dropout(0.0), nn.Linear(6, 1)).to(D)
    X = torch.randn(4, 3, dtype=D)
    hv.hessian(model, X, batched=True)
    model[2].p = 0.3  # dropout in training mode now: no Hessian per sample
    with pytest.raises(hv.HessvizError, match="Dropout"):
        hv.hessian(model, X, batched=True)
    model[2].p = 0.0
    seen = []
    handle = model[1].register_forward_hook(lambda m, i, o: seen.append(1))
    torch.testing.assert_close(hv.hessian(model, X, batched=True), _reference(model, X, "hessian"))
    handle.remove()


class ReluTanh(nn.Module):
    """``fc3(tanh(fc2(relu(fc1(x)))))``: hidden unit 0 of ``fc1`` is ``relu(x_0)``, dead for
    the first sample (``x_0 < 0``) and alive for the others."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 1)
        with torch.no_grad():
            self.fc1.weight[0] = torch.tensor([1.0, 0.0, 0.0])
            self.fc1.bias[0] = 0.0

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


def test_a_replaced_weight_of_a_lowered_forward_is_used():
    model = ReluTanh().to(D)
    X = torch.randn(4, 3, dtype=D)
    X[0, 0], X[1:, 0] = -1.0, 1.0
    assert hv.auto_method(model, X, batched=True) == "structured"  # lowered to a chain
    hv.hessian(model, X, batched=True)
    assert _entry(model, "hessian", X) is not None
    # A new tensor (not an in-place edit) that differs only where the first sample cannot see
    # it: f(x_0) is unchanged, the other samples' Hessians are not.
    W = model.fc2.weight.detach().clone()
    W[:, 0] += 0.5
    model.fc2.weight = nn.Parameter(W)
    torch.testing.assert_close(hv.hessian(model, X, batched=True), _reference(model, X, "hessian"))


def test_a_forward_that_branches_is_checked_on_every_call():
    class Branchy(Custom):
        def __init__(self) -> None:
            super().__init__()
            self.other, self.use_other = nn.Linear(8, 2), False

        def forward(self, x):
            head = self.other if self.use_other else self.fc2
            return head(torch.tanh(self.fc1(x)))

    model, X = Branchy().to(D), torch.randn(4, 3, dtype=D)
    hv.hessian(model, X, batched=True)
    assert _entry(model, "hessian", X) is not None
    model.use_other = True  # a Python attribute the forward reads: no module or tensor changed
    torch.testing.assert_close(hv.hessian(model, X, batched=True), _reference(model, X, "hessian"))


def test_bad_input_on_the_second_call_still_gets_the_clear_error():
    model, X = _mlp(), torch.randn(4, 3, dtype=D)
    hv.hessian(model, X, batched=True)
    hv.hvp(model, X, X, batched=True)
    bad = X.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(hv.HessvizError, match="NaN"):
        hv.hessian(model, bad, batched=True)
    with pytest.raises(hv.HessvizError, match="shape of x"):
        hv.hvp(model, X, X[:2], batched=True)
    with pytest.raises(hv.HessvizError, match="float32"):
        hv.hessian(model.float(), X, batched=True)  # model changed dtype, x did not


@pytest.mark.parametrize(
    "where, value",
    [("x", float("inf")), ("x", float("nan")), ("v", float("-inf")), ("v", float("nan"))],
)
def test_a_non_finite_x_or_v_of_a_repeated_hvp_gets_the_clear_error(where, value):
    """The repeated HVP checks ``x`` and ``v`` with one dot product: a non-finite entry facing a
    zero of the other (``inf · 0``) must not slip through."""
    model, X = _mlp(), torch.randn(4, 3, dtype=D)
    V = torch.randn(4, 3, dtype=D)
    hv.hvp(model, X, V, batched=True)
    X, V = X.clone(), V.clone()
    X[1, 2] = V[1, 2] = 0.0
    (X if where == "x" else V)[1, 2] = value
    with pytest.raises(hv.HessvizError, match="NaN|inf"):
        hv.hvp(model, X, V, batched=True)


def test_user_tensors_are_never_changed_or_aliased():
    model, X = _mlp(act=lambda: nn.Tanh()), torch.randn(4, 3, dtype=D)
    hv.hessian(model, X, batched=True)
    before = X.clone()
    H = hv.hessian(model, X, batched=True)
    assert torch.equal(X, before)
    H.zero_()  # the result is the caller's own tensor: changing it changes no later answer
    torch.testing.assert_close(hv.hessian(model, X, batched=True), _reference(model, X, "hessian"))


def test_different_requests_have_their_own_plans():
    model = _mlp()
    X, Xs = torch.randn(4, 3, dtype=D), torch.randn(3, dtype=D)
    full = hv.hessian(model, X, batched=True)
    one = hv.hessian(model, X, batched=True, outputs=1)
    torch.testing.assert_close(one, full[:, 1])
    torch.testing.assert_close(hv.hessian(model, X, batched=True, outputs=[1]), full[:, 1:])
    single = hv.hessian(model, Xs)  # unbatched: its own key
    torch.testing.assert_close(hv.hessian(model, Xs), single)
    torch.testing.assert_close(single, hv.hessian(model, Xs[None], batched=True)[0])
    torch.testing.assert_close(
        hv.hessian(model, X, batched=True, flat=True), full.reshape(4, 2, 3, 3)
    )


class Residual(nn.Module):
    """A residual block with a norm: the graph engine's, not a chain of layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.inp, self.fc, self.out = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.norm = nn.LayerNorm(6)
        self.gain = 1.0

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = h + self.gain * torch.tanh(self.fc(self.norm(h)))
        return self.out(h)


@pytest.mark.parametrize("op", ["hessian", "diagonal", "laplacian", "hvp"])
def test_graph_plans_are_reused_and_exact(op):
    model = Residual().to(D)
    X, V = torch.randn(5, 3, dtype=D), torch.randn(5, 3, dtype=D)
    assert hv.auto_method(model, X, op=op, batched=True) == "graph"
    _call(model, X, op, V)
    assert _entry(model, op, X) is not None
    X2, V2 = torch.randn(5, 3, dtype=D), torch.randn(5, 3, dtype=D)
    torch.testing.assert_close(_call(model, X2, op, V2), _reference(model, X2, op, V2))


def test_a_graph_whose_forward_changed_is_captured_again():
    model, X = Residual().to(D), torch.randn(5, 3, dtype=D)
    hv.hessian(model, X, batched=True)
    model.gain = 0.5  # a Python number the trace baked in: f(x) no longer equals the graph
    torch.testing.assert_close(hv.hessian(model, X, batched=True), _reference(model, X, "hessian"))
    model.norm.weight = nn.Parameter(torch.rand(6, dtype=D) + 0.5)  # a new tensor
    torch.testing.assert_close(hv.hessian(model, X, batched=True), _reference(model, X, "hessian"))


@pytest.mark.parametrize("make", [lambda: _mlp(), lambda: Custom().to(D), lambda: Residual().to(D)],
                         ids=["sequential", "lowered", "graph"])  # fmt: skip
def test_plans_do_not_keep_the_model_alive(make):
    model, X = make(), torch.randn(4, 3, dtype=D)
    for op in ("hessian", "diagonal", "laplacian", "hvp"):
        _call(model, X, op, X)
        _call(model, X, op, X)
    assert _entry(model, "hessian", X) is not None
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None, "a cached plan keeps the model (and its parameters) in memory"


@pytest.mark.parametrize("op", ["hessian", "diagonal", "laplacian", "hvp"])
def test_a_forward_set_on_an_instance_later_is_honoured(op):
    """``m.forward = …`` makes ``m(x)`` call the new function (a Python function, a builtin, a
    method bound to the model), whatever ``type(m)`` says: repeated calls must follow it, and
    the plan must not keep the model alive through it."""
    import types

    model, X = _mlp(), torch.randn(4, 3, dtype=D)
    V = torch.randn(4, 3, dtype=D)

    def check(f):
        torch.testing.assert_close(_call(f, X, op, V), _reference(f, X, op, V))

    check(model)
    model[1].forward = lambda z: 2 * torch.tanh(z)  # a Python function
    check(model)
    check(model)  # and from its own plan
    model[3].forward = torch.sin  # a builtin (no weak reference to it exists)
    check(model)
    del model[1].forward, model[3].forward  # the class's forward again
    check(model)
    model.forward = types.MethodType(lambda self, z: self[4](self[0](z).sin()), model)
    check(model)
    check(model)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None, "a plan keeps the model alive through its forward"


def test_the_layer_wise_engine_refuses_a_forward_set_on_an_instance():
    from hessviz.structured.layers import Unsupported, parse

    model = _mlp()
    model[1].forward = torch.sin
    with pytest.raises(Unsupported, match="forward replaced"):
        parse(model)
    model = _mlp()
    model.forward = lambda z: z
    with pytest.raises(Unsupported, match="forward replaced"):
        parse(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 3), (3, 40), (1, 1), (40, 20)])
def test_the_repeated_calls_finiteness_product_finds_every_bad_entry(dtype, shape):
    """:func:`hessviz._hot._numpy_finite` takes one dot product (``x · x``, or ``x · v``): a
    NaN, an infinity, infinities of opposite sign that would cancel in a sum, or an infinity
    against a zero of the other factor, anywhere, must all be caught — without a warning."""
    B, n = shape
    X = torch.randn(B, n, dtype=dtype, generator=torch.Generator().manual_seed(0))
    finite = _hot._numpy_finite
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's floating-point warnings would be errors here
        assert finite(X, None) and finite(X, X.clone())
        for i, j in [(0, 0), (B - 1, n - 1), (B // 2, n // 2)]:
            for bad in (float("nan"), float("inf"), float("-inf")):
                Y = X.clone()
                Y[i, j] = bad
                assert not finite(Y, None)
                assert not finite(X, Y)  # in v
                assert not finite(Y, X)  # in x, with v
                Z = torch.zeros_like(X)  # inf · 0 is NaN
                assert not finite(Y, Z) and not finite(Z, Y)
            if B > 1 and n > 1:
                Y = X.clone()
                Y[i, j] = float("inf")
                Y[i, (j + 1) % n] = Y[(i + 1) % B, j] = float("-inf")
                assert not finite(Y, None)
                W = torch.ones_like(X)  # infinities of opposite sign in v against ones in x
                W[i, j], W[i, (j + 1) % n] = float("inf"), float("-inf")
                assert not finite(torch.ones_like(X), W)


def test_a_repeated_call_proves_inputs_numpy_cannot_view_as_they_are_finite():
    """An input requiring grad is read through a detached view, a subclass and a
    non-contiguous one by torch, half precision by torch: each still answers, and a NaN or an
    infinity in any of them is still an error."""

    class Tagged(torch.Tensor):
        pass

    model = _mlp()
    X = torch.randn(4, 3, dtype=D)
    ref = _reference(model, X, "hessian")
    for x in (X.clone().requires_grad_(), X.as_subclass(Tagged), X.t().contiguous().t()):
        for _ in range(2):  # the first call, then the plan's
            torch.testing.assert_close(
                hv.hessian(model, x, batched=True).as_subclass(torch.Tensor), ref
            )
        bad = x.detach().clone()
        bad[1, 2] = float("nan")
        bad.requires_grad_(x.requires_grad)  # as the input it stands for
        with pytest.raises(hv.HessvizError, match="NaN"):
            hv.hessian(model, bad, batched=True)
    assert _entry(model, "hessian", X).by_numpy
    half = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(torch.bfloat16)
    Xh = X.to(torch.bfloat16)
    hv.laplacian(half, Xh, batched=True)
    hv.laplacian(half, Xh, batched=True)
    entry = _entry(half, "laplacian", Xh)
    assert entry is None or not entry.by_numpy
    Xh[3, 0] = float("inf")
    with pytest.raises(hv.HessvizError, match="inf"):
        hv.laplacian(half, Xh, batched=True)


def test_an_input_whose_product_overflows_is_still_served():
    """``x · x`` overflows for finite float32 entries near 1e19: such a call takes the full
    path, which checks element by element, and still answers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    X = torch.randn(5, 3)
    hv.laplacian(model, X, batched=True)
    big = X.clone()
    big[0, 0] = 3e19
    assert not _hot._numpy_finite(big, None) and bool(torch.isfinite(big).all())
    torch.testing.assert_close(
        hv.laplacian(model, big, batched=True),
        hv.laplacian(model, big, batched=True, method="func"),
    )


@pytest.mark.parametrize("mode", ["enable_grad", "no_grad", "inference_mode"])
def test_a_repeated_call_leaves_autograd_as_it_found_it(mode):
    """The plan switches autograd off around its kernel and back on after it, also when the
    kernel fails; inside ``inference_mode`` results are still normal tensors."""
    model, X = _mlp(), torch.randn(4, 3, dtype=D)
    ref = _reference(model, X, "hessian")
    hv.hessian(model, X, batched=True)
    context = {"enable_grad": torch.enable_grad, "no_grad": torch.no_grad}.get(
        mode, torch.inference_mode
    )
    with context():
        before = torch.is_grad_enabled()
        H = hv.hessian(model, X, batched=True)
        assert torch.is_grad_enabled() == before
        entry = _entry(model, "hessian", X)
        kernel = entry.kernel
        entry.kernel = lambda *args: 1 / 0  # the kernel fails: the full path answers
        try:
            torch.testing.assert_close(hv.hessian(model, X, batched=True), ref)
        finally:
            entry.kernel = kernel
        assert torch.is_grad_enabled() == before
    torch.testing.assert_close(H, ref)
    assert not H.is_inference() and not H.requires_grad
