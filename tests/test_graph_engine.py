"""The graph engine against its oracle, its decompositions against the ops, its rules against
forward-mode AD, and the checks that keep a wrong plan from ever being used."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vmap

import hessviz as hv
from hessviz import engine, ops
from hessviz._problem import prepare
from hessviz.engine import decompositions, reference, rules

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


class Block(nn.Module):
    """A residual block with a norm, a product and a division: every tap kind."""

    def __init__(self):
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(3, 6), nn.LayerNorm(6), nn.Linear(6, 2)

    def forward(self, x):
        h = F.silu(self.fc1(x))
        h = h + torch.tanh(self.ln(h)) * torch.sigmoid(h)
        return self.fc2(h) + x[..., :1] * x[..., 1:2] / (1 + x[..., 2:] ** 2)


def _seeded(build, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().double()


ORACLE_CASES = {
    "block": lambda: (_seeded(Block), _randn(3, seed=1)),
    "softmax-head": lambda: (
        _seeded(lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3), nn.Softmax(-1))),
        _randn(3, seed=2),
    ),
    "layer-norm-cubed": lambda: ((lambda v: F.layer_norm(v, (4,)).pow(3).sum()), _randn(4, seed=3)),
    "attention": lambda: (
        (lambda x: F.scaled_dot_product_attention(x, x, x).sum(-1)),
        _randn(3, 2, seed=4),
    ),
    "cholesky-logdet": lambda: (
        (lambda x: torch.logdet(torch.outer(x, x) + torch.eye(3, dtype=F64))),
        _randn(3, seed=5),
    ),
}


@pytest.mark.parametrize("name", ORACLE_CASES)
def test_engine_equals_the_plain_reference_of_the_identity(name):
    f, x = ORACLE_CASES[name]()
    p, _ = prepare("test", f, x, batched=False, outputs=None)
    pl = engine.plan(p)
    tensors = engine.leaf_tensors(f)[1]
    H_ref = reference.hessians(pl.graph, tensors, x, p.sel)
    H = engine.hessian(p, p.X, p.sel)[0]
    torch.testing.assert_close(H, H_ref, **TOL)
    torch.testing.assert_close(H, torch.func.hessian(p.sample_fn)(p.X[0]), **TOL)


def test_engine_is_exact_where_forward_over_forward_is_not():
    """PyTorch's jvp∘jvp is off for layer_norm; the engine never uses second-order forward mode."""
    f = lambda v: F.layer_norm(v, (4,)).pow(3).sum()  # noqa: E731
    x = _randn(4, seed=6)
    exact = torch.diagonal(torch.func.hessian(f)(x))
    torch.testing.assert_close(hv.hessian_diagonal(f, x), exact, **TOL)
    torch.testing.assert_close(hv.laplacian(f, x), exact.sum(), **TOL)
    assert hv.auto_method(f, x, op="diagonal") == "graph"


@pytest.mark.parametrize(
    ("op", "decomposed", "args"),
    [
        (lambda x: F.layer_norm(x, (5,), torch.ones(5, dtype=F64) * 1.5, torch.ones(5, dtype=F64)),
         lambda x: decompositions.native_layer_norm(x, (5,), torch.ones(5, dtype=F64) * 1.5, torch.ones(5, dtype=F64), 1e-5)[0], (2, 5)),
        (lambda x: F.group_norm(x, 2, eps=1e-5),
         lambda x: decompositions.native_group_norm(x, None, None, 2, 4, 3, 2, 1e-5)[0], (2, 4, 3)),
        (lambda x: torch.softmax(x, -1), lambda x: decompositions._softmax(x, -1), (2, 5)),
        (lambda x: torch.log_softmax(x, 1), lambda x: decompositions._log_softmax(x, 1), (2, 5)),
        (lambda x: torch.logsumexp(x, -1), lambda x: decompositions.logsumexp(x, -1), (2, 5)),
        (lambda x: F.mse_loss(x, torch.ones_like(x)), lambda x: decompositions.mse_loss(x, torch.ones_like(x)), (2, 3)),
        (lambda x: F.binary_cross_entropy_with_logits(x, torch.full_like(x, 0.3)),
         lambda x: decompositions.binary_cross_entropy_with_logits(x, torch.full_like(x, 0.3)), (2, 3)),
        (lambda x: F.scaled_dot_product_attention(x, x, x, is_causal=True),
         lambda x: decompositions.scaled_dot_product_attention(x, x, x, is_causal=True), (3, 2)),
    ],
)  # fmt: skip
def test_decompositions_compute_the_op_and_its_derivatives(op, decomposed, args):
    x = _randn(*args, seed=7)

    def scalar(g):  # a fixed weighting of the outputs: one scalar to differentiate twice
        return lambda x: (
            g(x) * torch.linspace(-1, 1, g(x).numel(), dtype=F64).reshape(g(x).shape)
        ).sum()

    torch.testing.assert_close(decomposed(x), op(x), **TOL)
    torch.testing.assert_close(
        torch.func.hessian(scalar(decomposed))(x), torch.func.hessian(scalar(op))(x), **TOL
    )


@pytest.mark.parametrize(
    ("name", "fn", "shape"),
    [
        ("permute", lambda x: x.permute(0, 2, 1), (2, 3, 4)),
        ("transpose", lambda x: x.transpose(1, 2), (2, 3, 4)),
        ("slice", lambda x: x[:, 1:3], (2, 4)),
        ("sum", lambda x: x.sum(1, keepdim=True), (2, 4)),
        ("cat", lambda x: torch.cat([x, 2 * x], 1), (2, 3)),
        ("max_pool2d_with_indices", lambda x: F.max_pool2d(x, 2), (1, 2, 4, 4)),
        ("where", lambda x: torch.where(x > 0, x, -0.5 * x), (2, 3)),
        ("maximum", lambda x: torch.maximum(x, x.flip(-1)), (2, 3)),
    ],
)
def test_tangent_rules_equal_forward_mode(name, fn, shape):
    """Each rule, run through the executor, carries the same Jacobian as forward-mode AD."""
    x = _randn(*shape, seed=8)
    f = lambda v: torch.tanh(fn(torch.sin(v))).sum().reshape(1) * 1.0  # noqa: E731
    p, _ = prepare("test", f, x, batched=False, outputs=None)
    pl = engine.plan(p)
    assert any(
        ops.op_name(n.target) == name
        for n in pl.graph.module.graph.nodes
        if n.op == "call_function"
    )
    torch.testing.assert_close(
        engine.hessian(p, p.X, p.sel)[0], torch.func.hessian(p.sample_fn)(p.X[0]), **TOL
    )
    # the rule alone, on the op as the graph calls it, against forward-mode AD
    node = next(n for n in pl.graph.module.graph.nodes if ops.op_name(n.target) == name)
    if not isinstance(node.args[0], torch.fx.Node) or any(
        isinstance(a, torch.fx.Node) for a in node.args[1:]
    ):
        return  # several inputs: checked through the Hessian above
    basis = torch.eye(x.numel(), dtype=F64).reshape(-1, *shape)
    src = torch.sin(x)
    args = tuple(src if a is node.args[0] else a for a in node.args)
    out = node.target(*args, **node.kwargs)
    targs = tuple(torch.cos(x) * basis if a is node.args[0] else None for a in node.args)
    mine = rules.tangent(
        name, node.target, args, dict(node.kwargs), targs, out, basis.shape[0], [0]
    )
    g = lambda v: node.target(v, *args[1:], **node.kwargs)  # noqa: E731
    ref = vmap(lambda t: jvp(g, (src,), (t,))[1])(torch.cos(x) * basis)
    if isinstance(mine, tuple):
        mine, ref = mine[0], ref[0]
    torch.testing.assert_close(mine, ref, **TOL)


def test_a_wrong_rule_is_caught_by_the_self_check(monkeypatch):
    """No silent wrong number: a plan whose curvature is wrong is never used."""
    model = _seeded(Block)
    x = _randn(4, 3, seed=9)
    monkeypatch.setitem(
        ops.DERIVATIVES, "tanh", lambda z, a: (1 - a * a, 1.3 * (-2 * a * (1 - a * a)))
    )
    p, _ = prepare("test", model, x, batched=True, outputs=None)
    with pytest.raises(engine.Unsupported, match="self-check"):
        engine.plan(p)
    explained = hv.explain(model, x, batched=True)
    assert explained.method == "func" and "self-check" in explained.reason
    H = hv.hessian(model, x, batched=True)
    ref = torch.stack([torch.func.hessian(lambda s: model(s[None])[0])(s) for s in x])
    torch.testing.assert_close(H, ref, **TOL)


def test_a_model_swapped_inside_a_closure_is_recaptured():
    a, b = _seeded(Block, 1), _seeded(Block, 2)
    holder = {"net": a}
    f = lambda x: holder["net"](x)  # noqa: E731
    x = _randn(4, 3, seed=10)
    first = hv.hessian(f, x, batched=True, method="graph")
    holder["net"] = b
    with warnings.catch_warnings():
        warnings.simplefilter("error", hv.HessvizFallbackWarning)
        second = hv.hessian(f, x, batched=True)
    ref = torch.stack([torch.func.hessian(lambda s: b(s[None])[0])(s) for s in x])
    torch.testing.assert_close(second, ref, **TOL)
    assert not torch.allclose(first, second)


def test_ops_that_mix_the_batch_are_refused_with_the_reason():
    f = lambda X: torch.tanh(X - X.mean(0))  # noqa: E731 - couples the samples
    p, _ = prepare("test", f, _randn(4, 3, seed=11), batched=True, outputs=None)
    with pytest.raises(engine.Unsupported, match="batch"):
        engine.plan(p)


def test_parameter_changes_invalidate_the_plan():
    model = _seeded(Block)
    x = _randn(4, 3, seed=12)
    hv.hessian(model, x, batched=True)
    with torch.no_grad():
        model.fc1.weight.mul_(2.0)
    H = hv.hessian(model, x, batched=True)
    ref = torch.stack([torch.func.hessian(lambda s: model(s[None])[0])(s) for s in x])
    torch.testing.assert_close(H, ref, **TOL)


def test_node_terms_are_named_by_module_and_sum_to_the_hessian():
    model = _seeded(Block)
    x = _randn(3, seed=13)
    terms = hv.layer_terms(model, x)
    assert {"ln", "fc1"} & {t.path for t in terms}
    torch.testing.assert_close(sum(t.hessian for t in terms), hv.hessian(model, x), **TOL)
