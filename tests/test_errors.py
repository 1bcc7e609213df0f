"""The bad-input catalogue: every misuse gets a correct result or a clear HessvizError.

Each entry is ``(id, call, expected)``: ``expected`` is a regex the error message must match (it
names the argument and the fix) or a checker for a correct result. Every call must leave the model
and the input exactly as they were, and every refusal names the function that refused. (How fast
misuse is answered is measured by ``benchmarks/misuse_latency.py``, not asserted here.)
"""

import numpy as np
import pytest
import torch
from torch import nn

import hessviz as hv

F64 = torch.float64


def _model():
    return hv.mlp([4, 5, 3], "tanh", seed=0)


def _x():
    return torch.linspace(-1, 1, 4, dtype=F64)


def _X():
    return torch.linspace(-1, 1, 8, dtype=F64).reshape(2, 4)


def ok_close(reference):
    """Checker: the result equals ``reference()`` (computed the plain way)."""

    def check(result):
        torch.testing.assert_close(result, reference(), rtol=1e-9, atol=1e-9)

    return check


def _ref(model, x):
    return torch.func.hessian(model)(x)


def _trainable(kind):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), kind(4) if kind is nn.BatchNorm1d else kind(0.5),
                        nn.Tanh(), nn.Linear(4, 2)).double()  # fmt: skip
    return net.train()


def _control_flow(x):
    return (x**3).sum() if x.sum() > 0 else (x**2).sum()


def _with_graph():
    w = torch.linspace(0, 1, 4, dtype=F64, requires_grad=True)
    return w * 2  # x with an autograd history


M, X = _model(), _x()
BN = _trainable(nn.BatchNorm1d).eval()
with torch.no_grad():
    BN[1].running_mean.uniform_(-1, 1)
    BN[1].running_var.uniform_(0.5, 2)
CATALOGUE = [
    # f itself
    ("f-not-callable", lambda: hv.hessian(42, X), r"f must be callable"),
    ("f-returns-float", lambda: hv.hessian(lambda x: 1.0, X), r"must return a torch.Tensor"),
    ("f-returns-tuple", lambda: hv.hessian(lambda x: (x, x), X), r"tuple of 2.*lambda x: f\(x\)\[0\]"),
    ("f-returns-list", lambda: hv.hvp(lambda x: [x], X, X), r"list of 1"),
    ("f-returns-int", lambda: hv.hessian(lambda x: x.long(), X), r"real floating output"),
    ("f-returns-complex", lambda: hv.hessian(lambda x: x * 1j, X), r"real floating output"),
    ("f-returns-empty", lambda: hv.hessian(lambda x: x[:0], X), r"empty tensor"),
    ("f-wrong-input-size", lambda: hv.hessian(M, torch.ones(3, dtype=F64)),
     r"f raised RuntimeError.*shape \(3,\).*Check that x has the shape"),
    ("f-dtype-mismatch", lambda: hv.hessian(M, X.float()),
     r"f raised RuntimeError.*parameters are torch.float64 but x is torch.float32.*x.to"),
    ("f-device-mismatch", lambda: hv.hessian(_model().to("meta"), X),
     r"f raised.*model is on meta but x is on cpu"),
    # x
    ("x-list", lambda: hv.hessian(M, [0.0, 1.0, 2.0, 3.0]), r"x must be a torch.Tensor.*as_tensor"),
    ("x-numpy", lambda: hv.hessian(M, np.zeros(4)), r"x must be a torch.Tensor"),
    ("x-int", lambda: hv.hessian(M, torch.arange(4)), r"real floating.*int64.*\.double\(\)"),
    ("x-bool", lambda: hv.hessian(M, torch.ones(4, dtype=torch.bool)), r"real floating.*bool"),
    ("x-complex", lambda: hv.hessian(M, X * 1j), r"real floating.*complex"),
    ("x-empty", lambda: hv.hessian(lambda x: x.sum(), torch.zeros(0, dtype=F64)), r"x is empty"),
    ("x-nan", lambda: hv.hessian(M, torch.tensor([0, float("nan"), 0, 0], dtype=F64)), r"NaN or inf"),
    ("x-inf", lambda: hv.laplacian(M, torch.tensor([0, float("inf"), 0, 0], dtype=F64)), r"NaN or inf"),
    ("x-non-contiguous", lambda: hv.hessian(M, _X().reshape(4, 2).T[0]),
     ok_close(lambda: _ref(M, _X().reshape(4, 2).T[0].contiguous()))),
    ("x-transposed-batch", lambda: hv.hessian(M, torch.linspace(-1, 1, 8, dtype=F64).reshape(4, 2).T, batched=True),
     ok_close(lambda: torch.stack([_ref(M, r) for r in torch.linspace(-1, 1, 8, dtype=F64).reshape(4, 2).T]))),
    ("x-expanded", lambda: hv.hessian(M, X[None].expand(3, 4), batched=True),
     ok_close(lambda: _ref(M, X)[None].expand(3, 3, 4, 4))),
    ("x-with-graph", lambda: hv.hessian(M, _with_graph()), ok_close(lambda: _ref(M, _with_graph().detach()))),
    # v
    ("v-wrong-shape", lambda: hv.hvp(M, X, torch.ones(3, dtype=F64)), r"v must have the shape of x \(4,\)"),
    ("v-not-tensor", lambda: hv.hvp(M, X, [1.0] * 4), r"v must be a torch.Tensor"),
    ("v-nan", lambda: hv.hvp(M, X, torch.full((4,), float("nan"), dtype=F64)), r"v contains NaN"),
    ("v-int", lambda: hv.hvp(M, X, torch.ones(4, dtype=torch.int32)), r"v must be a real floating"),
    ("v-float32-with-float64-x", lambda: hv.hvp(M, X, torch.ones(4)),
     ok_close(lambda: _ref(M, X) @ torch.ones(4, dtype=F64))),
    # outputs
    ("outputs-out-of-range", lambda: hv.hessian(M, X, outputs=3), r"outputs=3 is out of range.*0\.\.2"),
    ("outputs-negative-out-of-range", lambda: hv.hessian(M, X, outputs=-4), r"outputs=-4 is out of range"),
    ("outputs-negative", lambda: hv.hessian(M, X, outputs=-1), ok_close(lambda: _ref(M, X)[2])),
    ("outputs-float", lambda: hv.hessian(M, X, outputs=1.5), r"outputs must be None, an int or a list"),
    ("outputs-str", lambda: hv.hessian(M, X, outputs="0"), r"outputs must be None, an int or a list"),
    ("outputs-bool", lambda: hv.hessian(M, X, outputs=True), r"outputs must be None.*bool"),
    ("outputs-list-with-float", lambda: hv.hessian(M, X, outputs=[0, 1.0]), r"outputs must be ints, got 1.0"),
    ("outputs-empty", lambda: hv.hessian(M, X, outputs=[]), r"empty list.*None for all outputs"),
    ("outputs-huge-invalid", lambda: hv.hessian(M, X, outputs=list(range(10**6))), r"outputs=3 is out of range"),
    ("outputs-huge-valid", lambda: hv.hessian_diagonal(M, X, outputs=[1] * 20_000),
     ok_close(lambda: torch.diagonal(_ref(M, X)[1]).expand(20_000, 4))),
    ("outputs-int-tensor", lambda: hv.hessian(M, X, outputs=torch.tensor([2, 0])), ok_close(lambda: _ref(M, X)[[2, 0]])),
    ("outputs-float-tensor", lambda: hv.hessian(M, X, outputs=torch.tensor([0.0])), r"outputs must hold ints"),
    ("outputs-numpy-int", lambda: hv.hessian(M, X, outputs=np.int64(1)), ok_close(lambda: _ref(M, X)[1])),
    # batched
    ("batched-0d-x", lambda: hv.hessian(lambda x: x**3, torch.tensor(1.0, dtype=F64), batched=True), r"batched=True needs x with a leading batch"),
    ("batched-f-drops-batch", lambda: hv.hessian(lambda x: (x**2).sum(), _X(), batched=True), r"keep the batch dimension.*batched=False"),
    ("batched-not-bool", lambda: hv.hessian(M, X, batched="yes"), r"batched must be True or False"),
    ("batched-dropout-train", lambda: hv.hessian(_trainable(nn.Dropout), _X(), batched=True), r"Dropout.*model.eval\(\)"),
    ("batched-batchnorm-train", lambda: hv.hessian(_trainable(nn.BatchNorm1d), _X(), batched=True), r"BatchNorm.*couples the samples.*model.eval\(\)"),
    ("single-dropout-train", lambda: hv.hvp(_trainable(nn.Dropout), X, X), r"Dropout.*model.eval\(\)"),
    ("batchnorm-eval-buffers", lambda: hv.hessian(BN, _X(), batched=True),
     ok_close(lambda: torch.stack([torch.func.hessian(lambda s: BN(s[None])[0])(r) for r in _X()]))),
    # method
    ("method-unknown", lambda: hv.hessian(M, X, method="fast"), r"unknown method 'fast'.*'auto'"),
    ("method-not-str", lambda: hv.hessian(M, X, method=None), r"unknown method None"),
    ("method-cannot", lambda: hv.hessian(M, X, method="taylor"), r"'taylor' does not compute hessian"),
    ("method-structured-generic", lambda: hv.hessian(lambda x: x.sin().sum(), X, method="structured"), r"needs an nn.Sequential.*method='func'"),
    ("layer-terms-value-branch", lambda: hv.layer_terms(lambda x: x.sin().sum() * float(x.sum() > 0), X), r"neither engine applies.*tensor value"),
    ("auto-method-bad-op", lambda: hv.auto_method(M, X, op="jacobian"), r"op must be one of"),
    # finite differences and Hutchinson
    ("fd-step-zero", lambda: hv.fd_hessian(M, X, step=0), r"step must be a positive number.*None"),
    ("fd-step-negative", lambda: hv.fd_diagonal(M, X, step=-1e-3), r"step must be a positive number"),
    ("fd-step-nan", lambda: hv.fd_hessian(M, X, step=float("nan")), r"step must be a positive number"),
    ("fd-step-str", lambda: hv.fd_hessian(M, X, step="small"), r"step must be a positive number"),
    ("hutchinson-samples-zero", lambda: hv.hutchinson_diagonal(M, X, samples=0), r"samples must be an int ≥ 1"),
    ("hutchinson-samples-float", lambda: hv.hutchinson_diagonal(M, X, samples=2.5), r"samples must be an int"),
    ("hutchinson-seed-str", lambda: hv.hutchinson_diagonal(M, X, seed="a"), r"seed must be an int"),
    # mlp
    ("mlp-one-size", lambda: hv.mlp([3]), r"at least two positive ints"),
    ("mlp-zero-width", lambda: hv.mlp([3, 0, 1]), r"at least two positive ints"),
    ("mlp-sizes-str", lambda: hv.mlp("3,4"), r"sizes must be a list of ints"),
    ("mlp-unknown-activation", lambda: hv.mlp([2, 2], "swish"), r"unknown activation 'swish'.*tanh"),
    ("mlp-int-dtype", lambda: hv.mlp([2, 2], dtype=torch.int32), r"floating torch dtype"),
    # contexts and unusual functions
    ("inside-no-grad", lambda: _in(torch.no_grad, lambda: hv.hessian(M, X)), ok_close(lambda: _ref(M, X))),
    ("inside-inference-mode", lambda: _in(torch.inference_mode, lambda: hv.hessian(M, X)), ok_close(lambda: _ref(M, X))),
    ("f-detached-output", lambda: hv.hessian(lambda x: x.detach() ** 2, X), ok_close(lambda: torch.zeros(4, 4, 4, dtype=F64))),
    ("f-control-flow", lambda: hv.hessian(_control_flow, X + 1), ok_close(lambda: torch.diag(6 * (X + 1)))),
    ("f-constant", lambda: hv.hessian_diagonal(lambda x: torch.ones(2, dtype=F64), X), ok_close(lambda: torch.zeros(2, 4, dtype=F64))),
    # memory budget
    ("budget-exceeded", lambda: hv.hessian(lambda x: (x**3).sum(), torch.zeros(40_000, dtype=F64)), r"memory budget.*outputs=.*hessian_diagonal"),
    ("budget-not-int", lambda: hv.set_memory_budget("big"), r"positive number of bytes"),
]  # fmt: skip


def _in(context, fn):
    with context():
        return fn()


def _state(model, x):
    params = model.parameters() if isinstance(model, nn.Module) else ()
    inputs = x.detach().clone() if isinstance(x, torch.Tensor) else None
    return [p.detach().clone() for p in params], inputs


@pytest.mark.parametrize(("call", "expected"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])  # fmt: skip
def test_misuse_is_answered_clearly_fast_and_without_side_effects(call, expected):
    before, buffers = _state(M, X), [b.clone() for b in BN.buffers()]
    if isinstance(expected, str):
        with pytest.raises(hv.HessvizError, match=expected) as info:
            call()
        assert "Traceback" not in str(info.value)
    else:
        expected(call())
    after = _state(M, X)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
    assert torch.equal(before[1], after[1])
    assert M.training and all(p.requires_grad and p.grad is None for p in M.parameters())
    assert all(torch.equal(a, b) for a, b in zip(buffers, BN.buffers())) and not BN.training


REFUSALS = [c for c in CATALOGUE if isinstance(c[2], str)]


@pytest.mark.parametrize("call", [c[1] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_every_refusal_names_the_function_called(call):
    """``hessian: x must be …``: the message starts with the public function the user called."""
    called = [name for name in call.__code__.co_names if name in hv.__all__]
    assert len(called) == 1, called
    with pytest.raises(hv.HessvizError) as info:
        call()
    assert str(info.value).startswith(f"{called[0]}: "), str(info.value)


def test_errors_chain_the_users_exception():
    with pytest.raises(hv.HessvizError) as info:
        hv.hessian(M, torch.ones(3, dtype=F64))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert isinstance(info.value, ValueError)
