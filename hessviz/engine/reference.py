r"""A plain implementation of the graph identity, for tests: slow, short, obviously right.

For one sample, ``H_i = Σ_taps Σ_{a,b} J_aᵀ ∇²_{ab}⟨ḡ_i, g⟩ J_b`` with every ingredient taken from
``torch.autograd.functional`` on the captured graph: ``J_a`` is the Jacobian of the tap input's
value, ``ḡ_i`` the gradient of output ``i`` with respect to a perturbation of the tap's value, and
``∇²`` the Hessian of the op alone. The engine (:mod:`.assemble`) computes the same sum with
tangent rules, batched products and no autograd Jacobians; tests compare the two.
"""

from __future__ import annotations

import operator

import torch
from torch import fx
from torch.autograd.functional import hessian, jacobian

from .capture import Graph


def _values(graph: Graph, tensors, x, delta=None) -> dict:
    """Every node's value; ``delta`` maps tap nodes to perturbations added to their value."""
    env: dict = {}
    placeholders = [n for n in graph.module.graph.nodes if n.op == "placeholder"]
    env.update(zip(placeholders, [*tensors, x]))
    for node in graph.module.graph.nodes:
        if node.op == "get_attr":
            env[node] = getattr(graph.module, node.target)
        elif node.op == "call_function":
            args = fx.map_arg(node.args, lambda a: env[a])
            kwargs = fx.map_arg(node.kwargs, lambda a: env[a])
            env[node] = node.target(*args, **kwargs)
            if delta is not None and node in delta:
                env[node] = env[node] + delta[node]
        elif node.op == "output":
            out = node.args[0]
            env["y"] = env[out[0] if isinstance(out, (list, tuple)) else out]
    return env


def hessians(graph: Graph, tensors, x: torch.Tensor, sel) -> torch.Tensor:
    """``(m, n, n)``: the Hessians of the selected outputs of an unbatched graph at ``x``."""
    n = x.numel()
    env = _values(graph, tensors, x)
    H = x.new_zeros(len(sel), n, n)
    for tap in graph.taps:
        value = env[tap.node]
        zero = torch.zeros_like(value)
        Js = [
            jacobian(lambda x, u=u: _values(graph, tensors, x)[u], x).reshape(-1, n)
            for u in tap.inputs
        ]
        us = tuple(env[u].detach() for u in tap.inputs)

        def op(*vals, tap=tap):
            local = dict(zip(tap.inputs, vals))

            def pick(node):
                return local.get(node, env[node])

            args = fx.map_arg(tap.op.args, pick)
            kwargs = fx.map_arg(tap.op.kwargs, pick)
            out = tap.op.target(*args, **kwargs)
            return out if tap.node is tap.op else operator.getitem(out, tap.node.args[1])

        for k, i in enumerate(sel):

            def output(d, tap=tap, i=i):
                return _values(graph, tensors, x, {tap.node: d})["y"].reshape(-1)[i]

            adj = jacobian(output, zero)

            def weighted(*vals, op=op, adj=adj):
                return (op(*vals) * adj).sum()

            blocks = hessian(weighted, us)  # a tuple in, blocks out
            for a, Ja in enumerate(Js):
                for b, Jb in enumerate(Js):
                    Hab = blocks[a][b].reshape(Ja.shape[0], Jb.shape[0])
                    H[k] += Ja.T @ Hab @ Jb
    return H
