r"""Assembly: the Hessian of a captured graph as a sum of per-node terms.

For outputs ``y_i`` of a graph of operations, the second-order chain rule gives exactly

.. math:: H_i = \sum_{\text{nodes } g} \sum_{a, b} J_a^\top\, ∇^2_{ab} \langle \bar g_i, g \rangle\, J_b,

where ``a, b`` run over ``g``'s input-dependent arguments, ``J_a = ∂a/∂x`` and ``\bar g_i =
∂y_i/∂g`` is the adjoint of ``g``'s value. Linear and piecewise-linear nodes have no second
derivative and drop out; what is left are the *taps* found by :mod:`.capture`. Per sample:

1. one forward-mode pass carries ``J_a`` for every tap input (``jacfwd``, first order only — the
   second-order forward-mode rules that PyTorch gets wrong for some ops are never used);
2. one reverse pass, vectorised over the selected outputs, gives every tap's adjoint;
3. each tap adds its term: ``Jᵀ diag(σ''(z) ⊙ ḡ) J`` (unary), ``J_aᵀ diag(ḡ) J_b + J_bᵀ diag(ḡ)
   J_a`` (product), or, for any other op, ``Jᵀ (∇²⟨ḡ, g⟩ J)`` with the inner product from
   reverse-over-reverse Hessian-vector products of that one op.

Everything is written for one sample and vectorised over the batch with ``torch.func.vmap``.
Shapes: a sample is ``(n,)``, ``m`` outputs are selected; a tap input ``a`` of shape ``S_a`` has
``J_a`` of shape ``(*S_a, n)``.
"""

from __future__ import annotations

import operator

import torch
from torch import fx
from torch.func import grad, jacfwd, vjp, vmap

from .. import ops
from .capture import Graph, Tap


def _copy(graph: Graph, deltas: bool):
    """A copy of the graph whose output is chosen by the caller; with ``deltas``, every tap's
    value gets ``+ δ_k`` (a new input), so ``∂y/∂δ_k`` is the tap's adjoint."""
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    old = graph.module.graph
    for node in old.nodes:
        if node.op == "placeholder":
            env[node] = new.placeholder(node.name)
    delta = {}
    if deltas:
        delta = {t.node: new.placeholder(f"delta_{k}") for k, t in enumerate(graph.taps)}
    out = None
    for node in old.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            out = fx.map_arg(node.args[0], lambda n: env[n])
            continue
        env[node] = new.node_copy(node, lambda n: env[n])
        if node in delta:
            env[node] = new.call_function(torch.ops.aten.add.Tensor, (env[node], delta[node]))
    return new, env, out


class Kernel:
    """Per-sample forward (values and Jacobians) and reverse (adjoints) functions of a graph."""

    def __init__(self, graph: Graph):
        self.graph = graph
        taps = graph.taps
        # Every argument node a tap needs: input-dependent ones get Jacobians.
        self.dep_nodes: list[fx.Node] = []
        self.const_nodes: list[fx.Node] = []
        for t in taps:
            for a in _node_args(t.op):
                target = self.dep_nodes if a in t.inputs else self.const_nodes
                if a not in target and a not in self.dep_nodes:
                    target.append(a)
        self.const_nodes = [a for a in self.const_nodes if a not in self.dep_nodes]
        g, env, out = _copy(graph, deltas=False)
        g.output(
            (
                tuple(env[a] for a in self.dep_nodes),
                (
                    tuple(env[a] for a in self.const_nodes),
                    tuple(env[a] for a in self.dep_nodes),
                    tuple(env[t.node] for t in taps),
                ),
            )
        )
        self.forward = fx.GraphModule(graph.module, g)
        g, env, out = _copy(graph, deltas=True)
        g.output(out[0] if isinstance(out, (list, tuple)) else out)
        self.perturbed = fx.GraphModule(graph.module, g)
        self.tap_shapes = [tuple(t.node.meta["val"].shape) for t in taps]

    def _terms(self, tensors, x, rows, need: str):
        fwd = lambda x: self.forward(*tensors, x)  # noqa: E731
        jacs, (consts, dep_values, tap_values) = jacfwd(fwd, has_aux=True)(x)
        zeros = [x.new_zeros(s) for s in self.tap_shapes]
        _, pullback = vjp(lambda *d: self.perturbed(*tensors, x, *d), *zeros)
        adjoints = vmap(pullback)(rows)  # per tap: (m, *S_k)
        env_J = dict(zip(self.dep_nodes, jacs))
        env_v = dict(zip(self.const_nodes, consts))
        env_v.update(zip(self.dep_nodes, dep_values))
        n, m = x.shape[0], rows.shape[0]
        for tap, value, adj in zip(self.graph.taps, tap_values, adjoints):
            yield _term(tap, value, adj.reshape(m, -1), env_J, env_v, need, n)

    def per_sample(self, tensors, x, rows, need: str) -> torch.Tensor:
        """One sample's ``(m, n, n)`` Hessians (``need="hessian"``) or ``(m, n)`` diagonals.

        ``rows`` is ``(m, M)``: one-hot rows of the selected outputs.
        """
        n, m = x.shape[0], rows.shape[0]
        total = x.new_zeros((m, n, n) if need == "hessian" else (m, n))
        for term in self._terms(tensors, x, rows, need):
            total = total + term
        return total

    def per_tap(self, tensors, x, rows) -> torch.Tensor:
        """``(taps, m, n, n)``: each tap's term of one sample's Hessians."""
        n, m = x.shape[0], rows.shape[0]
        terms = list(self._terms(tensors, x, rows, "hessian"))
        return torch.stack(terms) if terms else x.new_zeros(0, m, n, n)


def _node_args(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    for a in (*node.args, *node.kwargs.values()):
        if isinstance(a, fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(b for b in a if isinstance(b, fx.Node))
    return list(dict.fromkeys(out))


def _op_fn(tap: Tap, env_v: dict):
    """``g(*inputs)``: the tap's op with its constant arguments bound."""

    def g(*vals):
        local = dict(env_v)
        local.update(zip(tap.inputs, vals))
        args = fx.map_arg(tap.op.args, lambda a: local[a])
        kwargs = fx.map_arg(tap.op.kwargs, lambda a: local[a])
        out = tap.op.target(*args, **kwargs)
        if tap.node is not tap.op:  # a tuple op: the tap is one of its items
            out = operator.getitem(out, tap.node.args[1])
        return out

    return g


def _flat_jacobian(J: torch.Tensor, out_shape: tuple, n: int) -> torch.Tensor:
    """``(*S_a, n)`` broadcast to ``(prod(out_shape), n)``."""
    S_a = J.shape[:-1]
    lead = (1,) * (len(out_shape) - len(S_a))
    return J.reshape(*lead, *S_a, n).expand(*out_shape, n).reshape(-1, n)


def _term(tap: Tap, value, adj, env_J, env_v, need, n):
    if tap.kind == "unary":
        (u,) = tap.inputs
        T = env_J[u].reshape(-1, n)  # (K, n)
        z = env_v[u]
        closed = ops.SECOND_DERIVATIVES.get(tap.name)
        if closed is not None and len(tap.op.args) == 1 and not tap.op.kwargs:
            s2 = closed(z, value)
        else:
            g = _op_fn(tap, env_v)
            s2 = grad(lambda v: grad(lambda w: g(w).sum())(v).sum())(z)
        c = adj * s2.reshape(1, -1)  # (m, K)
        if need == "hessian":
            return (T.T * c[:, None, :]) @ T
        return c @ (T * T)
    if tap.kind == "product":
        a, b = tap.inputs
        shape = tuple(value.shape)
        Ta, Tb = _flat_jacobian(env_J[a], shape, n), _flat_jacobian(env_J[b], shape, n)
        if need == "hessian":
            M = (Ta.T * adj[:, None, :]) @ Tb
            return M + M.mT
        return 2 * (adj @ (Ta * Tb))
    # generic: reverse-over-reverse HVPs of ⟨ḡ_i, g⟩ along the columns of the Jacobians
    us = [env_v[u] for u in tap.inputs]
    Ts = [env_J[u] for u in tap.inputs]  # (*S_a, n)
    g = _op_fn(tap, env_v)
    shape = value.shape
    argnums = tuple(range(len(us)))

    def hvps(weights):  # (K,) → per input: (n, *S_a), the Hessian times every direction
        phi = lambda *vals: (g(*vals) * weights.reshape(shape)).sum()  # noqa: E731
        _, back = vjp(grad(phi, argnums=argnums), *us)
        directions = tuple(T.movedim(-1, 0) for T in Ts)
        return vmap(back)(directions)

    HV = vmap(hvps)(adj)  # per input: (m, n, *S_a)
    total = 0
    for T, hv in zip(Ts, HV):
        Tf = T.reshape(-1, n)  # (K_a, n)
        hvf = hv.reshape(hv.shape[0], n, -1)  # (m, n, K_a)
        if need == "hessian":
            total = total + hvf @ Tf  # [i, q, p] = Σ_s HV[i, q, s] T[s, p]  (symmetric)
        else:
            total = total + (hvf * Tf.T[None]).sum(-1)
    return total
