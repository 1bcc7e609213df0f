"""Lowering: a captured graph that is a plain chain of linear layers and activations, as the
layer-wise engine's ``nn.Sequential``.

A hand-written ``forward`` like ``self.fc2(torch.tanh(self.fc1(x)))``, or a ``ModuleList`` loop,
captures as ``addmm → tanh → addmm``: the same network as its ``nn.Sequential`` twin. The
layer-wise kernels (with their stem and tail shortcuts) then run on a ``Sequential`` built from
the graph — new modules holding the user's tensors, the user's modules untouched — after the same
checks as any ``nn.Sequential``: its values must reproduce ``f``, and its Hessian must agree with
double backward of ``f`` itself. Anything else in the graph (a residual sum, a norm, a product)
is not a chain, and the graph engine runs it.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from .. import ops
from .capture import Graph

_PLAIN = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "relu": nn.ReLU, "sin": ops.Sin}


def _activation(name: str, node: fx.Node) -> nn.Module | None:
    args = node.args[1:]
    if name in _PLAIN and not args and not node.kwargs:
        return _PLAIN[name]()
    if name == "gelu" and not args:
        return nn.GELU(approximate=node.kwargs.get("approximate", "none"))
    if name == "softplus" and not node.kwargs:
        return nn.Softplus(*args)
    if name == "elu" and not node.kwargs and all(a == 1 for a in args[1:]):
        return nn.ELU(*args[:1])
    if name == "leaky_relu" and not node.kwargs:
        return nn.LeakyReLU(*args)
    return None


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` whose weight and bias are the given tensors (not copies)."""
    layer = nn.Linear(1, 1, bias=bias is not None, device="meta")
    del layer.weight
    layer.weight = weight
    if bias is not None:
        del layer.bias
        layer.bias = bias
    layer.in_features, layer.out_features = weight.shape[1], weight.shape[0]
    return layer


def chain(graph: Graph, tensors: list[torch.Tensor]) -> nn.Sequential | None:
    """The graph as ``Linear``/activation layers, or None when it is not such a chain.

    Only batched graphs of 2-D inputs ``(B, n)`` are lowered (the layout of an MLP's batch).
    """
    nodes = list(graph.module.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    value = dict(zip(placeholders[:-1], tensors))
    x = placeholders[-1]
    if not graph.batched or len(x.meta["val"].shape) != 2:
        return None
    current, layers, transposed = x, [], {}
    for node in nodes:
        if node.op in ("placeholder",):
            continue
        if node.op == "output":
            out = node.args[0]
            out = out[0] if isinstance(out, (list, tuple)) else out
            return nn.Sequential(*layers) if out is current and layers else None
        if node.op != "call_function":
            return None
        name = ops.op_name(node.target)
        args = node.args
        if name == "t" and args[0] in value:
            transposed[node] = value[args[0]]
        elif name == "addmm" and args[1] is current and args[2] in transposed and args[0] in value:
            if len(args) > 3 or node.kwargs:
                return None
            layers.append(_linear(transposed[args[2]], value[args[0]]))
            current = node
        elif name == "mm" and args[0] is current and args[1] in transposed:
            layers.append(_linear(transposed[args[1]], None))
            current = node
        elif node.target is not operator.getitem and args and args[0] is current:
            act = _activation(name, node)
            if act is None:
                return None
            layers.append(act)
            current = node
        elif node in graph.dependent:
            return None
    return None
