"""Capture: ``f`` as a graph of ATen operations, and which of them carry curvature.

``f`` is traced once per input shape with ``make_fx`` over ``torch.func.functionalize`` — in-place
activations become ordinary ops, so nothing the user owns is overwritten and no value is read
after being overwritten. A module's parameters and buffers enter as graph inputs through
``torch.func.functional_call``: the graph holds no copy of them. Norms, softmaxes and attention are
decomposed (:mod:`.decompositions`).

The trace is refused (:class:`Unsupported`, with the reason) when one graph cannot stand for ``f``
at every input of this shape: Python reads of tensor values, random ops, in-place changes that
functionalisation could not remove — and, for a batch of several samples, any op that is not
known to keep every sample in its own rows along dim 0 (the engine attributes the rows of each
node to the samples; an op that mixes rows, or moves the batch elsewhere, would make that wrong).
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass, field

import torch
import torch.fx.traceback as fx_traceback
from torch import fx, nn
from torch.fx.experimental.proxy_tensor import make_fx

from .. import ops
from .._problem import Problem, math_attention
from . import decompositions


class Unsupported(Exception):
    """The graph engine cannot plan for this ``f`` (the message says why)."""


@dataclass
class Tap:
    """A node with curvature: its op, input-dependent arguments and kind.

    Attributes:
        node: the node whose value the term is about (a ``getitem`` for ops returning tuples).
        op: the node that calls the op (differs from ``node`` for tuple ops).
        inputs: the op's input-dependent tensor arguments, in argument order.
        kind: ``"unary"``, ``"product"`` or ``"generic"`` (see :mod:`hessviz.ops`).
        name: the op's name, e.g. ``"tanh"``.
        path: the module path the op was called from (``"blocks.2.act"``), or ``""``.
    """

    node: fx.Node
    op: fx.Node
    inputs: list[fx.Node]
    kind: str
    name: str
    path: str = ""


@dataclass
class Graph:
    """A captured ``f`` and what the engine needs to know about its nodes.

    Attributes:
        module: the traced graph; its inputs are the module's tensors, then ``x``.
        batched: whether ``x`` carries a leading batch of ``rows`` samples.
        rows: samples along dim 0 of every input-dependent node (1 when unbatched).
        dependent: the nodes whose value depends on ``x`` (floating point ones only).
        taps: the nodes with curvature, in graph order.
        flops: multiply-adds of one forward pass of the whole batch (cost model).
        sizes: elements of all input-dependent values of the whole batch (memory model).
    """

    module: fx.GraphModule
    batched: bool
    rows: int
    dependent: set = field(default_factory=set)
    taps: list[Tap] = field(default_factory=list)
    flops: float = 0.0
    sizes: float = 0.0


def leaf_tensors(f) -> tuple[list[str], list[torch.Tensor]]:
    """A module's parameters and buffers (detached), by name; nothing for other callables."""
    if not isinstance(f, nn.Module):
        return [], []
    named = [*f.named_parameters(), *f.named_buffers()]
    return [k for k, _ in named], [v.detach() for _, v in named]


def _caller(p: Problem, names: list[str]):
    """``(tensors, x) → f(x)`` with ``x`` laid out as the user's (a batch, or one sample)."""
    f = p.f

    def call(tensors, x):
        if names:
            return torch.func.functional_call(f, dict(zip(names, tensors)), (x,), strict=True)
        return f(x)

    return call


def tensor_args(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    for a in (*node.args, *node.kwargs.values()):
        if isinstance(a, fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(b for b in a if isinstance(b, fx.Node))
    return out


def _val(node):
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _floating(node: fx.Node) -> bool:
    val = _val(node)
    if isinstance(val, torch.Tensor):
        return val.is_floating_point()
    if isinstance(val, (list, tuple)):
        return any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in val)
    return False


def _flops(node: fx.Node, name: str) -> float:
    val = _val(node)
    if not isinstance(val, torch.Tensor):
        return 0.0
    args = [_val(a) for a in tensor_args(node)]
    if name in ("mm", "addmm", "bmm", "baddbmm") and len(args) >= 2:
        return float(val.numel() * args[-1].shape[-2])
    if name == "convolution" and len(args) >= 2:
        return float(val.numel() * args[1][0].numel())
    return float(val.numel())


def _module_path(node: fx.Node) -> str:
    """The path of the innermost module of ``f`` whose forward created ``node`` (or "")."""
    return (node.meta.get("custom") or {}).get("hessviz_path", "")


@contextlib.contextmanager
def _module_paths(f):
    """While tracing, annotate each node with the module path it was created in.

    Global module hooks (removed on exit) open ``torch.fx.traceback.annotate`` for the duration
    of each submodule's forward; the user's modules are not touched. Names only: no number
    depends on them.
    """
    if not isinstance(f, nn.Module) or not hasattr(fx_traceback, "annotate"):
        yield
        return
    names = {id(m): name for name, m in f.named_modules() if name}
    open_: list[contextlib.ExitStack] = []

    def enter(module, args):
        name = names.get(id(module))
        if name is not None:
            stack = contextlib.ExitStack()
            stack.enter_context(fx_traceback.annotate({"hessviz_path": name}))
            open_.append(stack)

    def leave(module, args, out):
        if names.get(id(module)) is not None and open_:
            open_.pop().close()

    hooks = [
        nn.modules.module.register_module_forward_pre_hook(enter),
        nn.modules.module.register_module_forward_hook(leave),
    ]
    try:
        with fx_traceback.preserve_node_meta():
            yield
    finally:
        for h in hooks:
            h.remove()
        while open_:
            open_.pop().close()


def _out_of_place(node: fx.Node):
    """The plain twin of an in-place op (``add_`` → ``add``) when only this node reads the
    tensor it overwrites, else None."""
    target = node.args[0] if node.args else None
    if not isinstance(target, fx.Node) or set(target.users) != {node}:
        return None
    packet = getattr(node.target, "overloadpacket", None)
    plain = getattr(torch.ops.aten, getattr(packet, "__name__", "")[:-1], None)
    overload = getattr(node.target, "_overloadname", "default")
    return getattr(plain, overload, None) if plain is not None else None


def capture(p: Problem, X: torch.Tensor) -> Graph:
    """Trace ``p.f`` on ``X`` (``(B, n)``, flat rows of the problem) and classify its nodes.

    Raises:
        Unsupported: with the reason when no trustworthy graph can be built.
    """
    names, tensors = leaf_tensors(p.f)
    call = _caller(p, names)
    x = X.reshape(X.shape[0], *p.sample_shape) if p.batched else X.reshape(p.sample_shape)
    try:
        with torch.no_grad(), _module_paths(p.f), math_attention():
            gm = make_fx(
                torch.func.functionalize(call, remove="mutations"),
                decomposition_table=decompositions.TABLE,
                record_module_stack=True,
            )(tensors, x.detach())
    except Exception as err:
        text = str(err)
        for op, why in ops.REFUSED.items():
            if f"aten.{op}." in text:
                raise Unsupported(f"f uses {op}: {why}") from err
        raise Unsupported(f"f could not be traced ({type(err).__name__}: {text[:300]})") from err
    rows = X.shape[0] if p.batched else 1
    graph = Graph(gm, p.batched, rows)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    dep = graph.dependent
    dep.add(placeholders[-1])
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            continue
        if node.op == "output":
            out = node.args[0]
            out = out[0] if isinstance(out, (list, tuple)) else out
            if not isinstance(out, fx.Node):
                raise Unsupported("f does not return one tensor")
            if rows > 1 and out in dep and _val(out).shape[:1] != (rows,):
                raise Unsupported("f's output does not keep the batch along dim 0")
            continue
        if node.op != "call_function":
            continue
        name = ops.op_name(node.target)
        tags = getattr(node.target, "tags", ())
        in_place = name.endswith("_") and not name.startswith("_")
        if in_place and torch.Tag.inplace_view not in tags:
            plain = _out_of_place(node)
            if plain is not None:  # nothing else reads the old value: the plain op is the same
                node.target, name, in_place = plain, name[:-1], False
        if name in ops.REFUSED or (in_place and torch.Tag.inplace_view not in tags):
            why = ops.REFUSED.get(name, "it changes a tensor in place that the graph cannot follow")
            raise Unsupported(f"f uses {name}: {why}")
        if in_place:
            name = name[:-1]  # an in-place view (squeeze_, t_): the same map as its plain twin
        args = tensor_args(node)
        if name in ("detach", "sign") or not _floating(node):
            continue  # no derivative flows through (or out of) it
        if not any(a in dep for a in args):
            continue
        dep.add(node)
        graph.flops += _flops(node, name)
        val = _val(node)
        graph.sizes += val.numel() if isinstance(val, torch.Tensor) else 0
        if rows > 1:
            why = ops.mixes_rows(name, node, dep, rows)
            if why:
                raise Unsupported(
                    f"{name} (at {_module_path(node) or 'f'}) {why}, so the rows of the batch "
                    "cannot be told apart"
                )
        if node.target is operator.getitem:
            continue
        flags = [a in dep for a in args]
        kind = ops.kind(name, flags)
        if name == "native_batch_norm" and len(node.args) > 5 and not node.args[5]:
            kind = "flat"  # eval mode: an affine map of the input
        if kind == "flat":
            continue
        inputs = list(dict.fromkeys(a for a in args if a in dep))
        if kind in ("product", "matmul") and len(inputs) == 1:
            inputs = inputs * 2  # x * x
        targets = [node]
        if not isinstance(val, torch.Tensor):  # a tuple op: one tap per item used
            targets = [u for u in node.users if u.target is operator.getitem and _floating(u)]
        for t in targets:
            graph.taps.append(Tap(t, node, inputs, kind, name, _module_path(node)))
    return graph
