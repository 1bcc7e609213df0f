"""Tangent rules: how each op carries the Jacobian forward (first order only).

Tangents are stored direction first: a node of shape ``S`` has ``T`` of shape ``(r, *S)``, row ``j``
being ``∂node/∂x · e_j`` (the same direction in every sample of a batch), or ``None`` for zero.
A rule gets the op's evaluated arguments, the same arguments with tangents in place of tensors,
and the op's output; ops without a rule here use forward-mode AD on that one op (first order is
correct for every op; only PyTorch's second-order forward mode has known errors).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch.func import jvp, vmap

aten = torch.ops.aten
RULES: dict[str, Callable] = {}


def rule(*names: str):
    def register(fn):
        for name in names:
            RULES[name] = fn
        return fn

    return register


def lift(T: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(r, *S)`` → ``(r, 1, …, 1, *S)`` with ``ndim`` dims after ``r`` (right-aligned)."""
    missing = ndim - (T.ndim - 1)
    return T if missing <= 0 else T.reshape(T.shape[0], *([1] * missing), *T.shape[1:])


def full(T: torch.Tensor, shape) -> torch.Tensor:
    """A tangent broadcast to the output shape ``(r, *shape)``."""
    return lift(T, len(shape)).expand(T.shape[0], *shape)


def _dim(d: int, ndim: int) -> int:
    return d % max(ndim, 1) + 1


def _tensor(a):
    return isinstance(a, torch.Tensor)


@rule("view", "_unsafe_view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "alias",
      "clone", "contiguous", "lift_fresh_copy", "_to_copy", "to", "view_copy", "squeeze_copy",
      "unsqueeze_copy", "alias_copy", "expand", "expand_copy", "expand_as")  # fmt: skip
def _reshape(args, targs, out, r):
    T = targs[0]
    if T.dtype != out.dtype:
        T = T.to(out.dtype)
    if T[0].numel() != out.numel():  # expand
        return full(T, out.shape)
    return T.reshape(r, *out.shape)


@rule("t", "t_copy")
def _t(args, targs, out, r):
    return targs[0].transpose(1, 2) if targs[0].ndim == 3 else targs[0]


@rule("transpose", "transpose_copy")
def _transpose(args, targs, out, r):
    nd = args[0].ndim
    return targs[0].transpose(_dim(args[1], nd), _dim(args[2], nd))


@rule("permute", "permute_copy")
def _permute(args, targs, out, r):
    nd = args[0].ndim
    return targs[0].permute(0, *[_dim(d, nd) for d in args[1]])


@rule("slice", "slice_copy")
def _slice(args, targs, out, r):
    nd = args[0].ndim
    dim = args[1] if len(args) > 1 else 0
    rest = list(args[2:])
    return aten.slice.Tensor(targs[0], _dim(dim, nd), *rest)


@rule("select", "select_copy")
def _select(args, targs, out, r):
    return targs[0].select(_dim(args[1], args[0].ndim), args[2])


@rule("index_select")
def _index_select(args, targs, out, r):
    return targs[0].index_select(_dim(args[1], args[0].ndim), args[2])


@rule("narrow")
def _narrow(args, targs, out, r):
    return targs[0].narrow(_dim(args[1], args[0].ndim), args[2], args[3])


@rule("index")
def _index(args, targs, out, r):
    return aten.index.Tensor(targs[0], [None, *args[1]])


@rule("gather")
def _gather(args, targs, out, r):
    idx = args[2]
    return targs[0].gather(_dim(args[1], args[0].ndim), idx.expand(r, *idx.shape))


def _pieces(args, targs, r):
    return [t if t is not None else a.new_zeros(r, *a.shape) for a, t in zip(args[0], targs[0])]


@rule("cat")
def _cat(args, targs, out, r):
    dim = args[1] if len(args) > 1 else 0
    return torch.cat(_pieces(args, targs, r), _dim(dim, out.ndim))


@rule("stack")
def _stack(args, targs, out, r):
    dim = args[1] if len(args) > 1 else 0
    return torch.stack(_pieces(args, targs, r), _dim(dim, out.ndim))


@rule("neg")
def _neg(args, targs, out, r):
    return -targs[0]


def _sum_scaled(parts, out, r):
    total = None
    for T, scale in parts:
        if T is None:
            continue
        T = full(T, out.shape) if scale == 1 else full(T, out.shape) * scale
        total = T if total is None else total + T
    return total if total is not None else out.new_zeros(r, *out.shape)


@rule("add")
def _add(args, targs, out, r):
    alpha = args[2] if len(args) > 2 else 1
    return _sum_scaled([(targs[0], 1), (targs[1] if _tensor(args[1]) else None, alpha)], out, r)


@rule("sub")
def _sub(args, targs, out, r):
    alpha = args[2] if len(args) > 2 else 1
    return _sum_scaled([(targs[0], 1), (targs[1] if _tensor(args[1]) else None, -alpha)], out, r)


@rule("rsub")
def _rsub(args, targs, out, r):
    alpha = args[2] if len(args) > 2 else 1
    return _sum_scaled([(targs[0], -alpha), (targs[1] if _tensor(args[1]) else None, 1)], out, r)


@rule("mul")
def _mul(args, targs, out, r):
    a, b = args[0], args[1]
    ta, tb = targs[0], targs[1] if _tensor(b) else None
    parts = []
    if ta is not None:
        parts.append(lift(ta, out.ndim) * b)
    if tb is not None:
        parts.append(lift(tb, out.ndim) * a)
    total = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    return full(total, out.shape) if total[0].shape != out.shape else total


@rule("div")
def _div(args, targs, out, r):
    b = args[1]
    ta, tb = targs[0], targs[1] if _tensor(b) else None
    total = None
    if ta is not None:
        total = lift(ta, out.ndim) / b
    if tb is not None:
        part = -lift(tb, out.ndim) * (out / b)
        total = part if total is None else total + part
    return full(total, out.shape) if total[0].shape != out.shape else total


@rule("mm", "bmm")
def _mm(args, targs, out, r):
    a, b = args[0], args[1]
    total = None
    if targs[0] is not None:
        total = targs[0] @ b
    if targs[1] is not None:
        part = a @ targs[1]
        total = part if total is None else total + part
    return total


@rule("addmm", "baddbmm")
def _addmm(args, targs, out, r):
    beta = args[3] if len(args) > 3 else 1
    alpha = args[4] if len(args) > 4 else 1
    total = _mm(args[1:3], targs[1:3], out, r)
    if alpha != 1:
        total = total * alpha
    if targs[0] is not None:
        total = total + beta * full(targs[0], out.shape)
    return total


@rule("convolution")
def _convolution(args, targs, out, r):
    x, w = args[0], args[1]
    if targs[1] is not None:
        return None  # input-dependent weights: the generic rule
    T = targs[0].reshape(r * x.shape[0], *x.shape[1:])
    return aten.convolution(T, w, None, *args[3:]).reshape(r, *out.shape)


@rule("constant_pad_nd")
def _pad(args, targs, out, r):
    return aten.constant_pad_nd(targs[0], args[1], 0.0)


@rule("max_pool2d_with_indices", "max_pool1d_with_indices")
def _max_pool(args, targs, out, r):
    values, indices = out
    spatial = 2 if values.ndim >= 3 and indices.ndim == args[0].ndim and len(args[1]) == 2 else 1
    T = targs[0].flatten(-spatial)
    idx = indices.flatten(-spatial)
    picked = T.gather(-1, idx.expand(r, *idx.shape))
    return (picked.reshape(r, *values.shape), None)


@rule("relu")
def _relu(args, targs, out, r):
    return targs[0] * (args[0] > 0)


@rule("leaky_relu")
def _leaky_relu(args, targs, out, r):
    slope = args[1] if len(args) > 1 else 0.01
    return torch.where(args[0] > 0, targs[0], targs[0] * slope)


@rule("hardtanh")
def _hardtanh(args, targs, out, r):
    lo = args[1] if len(args) > 1 else -1.0
    hi = args[2] if len(args) > 2 else 1.0
    return targs[0] * ((args[0] > lo) & (args[0] < hi))


@rule("threshold")
def _threshold(args, targs, out, r):
    return targs[0] * (args[0] > args[1])


@rule("clamp")
def _clamp(args, targs, out, r):
    z = args[0]
    keep = torch.ones_like(z, dtype=torch.bool)
    lo = args[1] if len(args) > 1 else None
    hi = args[2] if len(args) > 2 else None
    if lo is not None:
        keep = keep & (z >= lo)
    if hi is not None:
        keep = keep & (z <= hi)
    return targs[0] * keep


@rule("abs")
def _abs(args, targs, out, r):
    return targs[0] * torch.sign(args[0])


@rule("where")
def _where(args, targs, out, r):
    cond = args[0]
    ta = targs[1] if _tensor(args[1]) and targs[1] is not None else None
    tb = targs[2] if _tensor(args[2]) and targs[2] is not None else None
    zero = out.new_zeros(())
    ta = full(ta, out.shape) if ta is not None else zero
    tb = full(tb, out.shape) if tb is not None else zero
    return full(torch.where(cond, ta, tb), out.shape)


@rule("_native_batch_norm_legit_no_training")
def _batch_norm_eval(args, targs, out, r):
    x, weight, _, _, var = args[:5]
    eps = args[6] if len(args) > 6 else 1e-5
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    scale = scale.reshape(-1, *([1] * (x.ndim - 2)))
    return (targs[0] * scale, None, None)


@rule("native_batch_norm")
def _batch_norm_eval_native(args, targs, out, r):
    if len(args) > 5 and args[5]:
        return None  # training mode: not affine (refused before it gets here)
    x, weight, _, _, var = args[:5]
    eps = args[7] if len(args) > 7 else 1e-5
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    return (targs[0] * scale.reshape(-1, *([1] * (x.ndim - 2))), None, None)


@rule("getitem")
def _getitem(args, targs, out, r):
    return None if targs[0] is None else targs[0][args[1]]


_BY_NAME_PER_CALL = {
    "split",
    "split_with_sizes",
    "unbind",
    "chunk",
    "split_copy",
    "unbind_copy",
    "sum",
    "mean",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "_adaptive_avg_pool2d",
    "_adaptive_avg_pool3d",
    "adaptive_avg_pool1d",
    "upsample_nearest1d",
    "upsample_nearest2d",
    "upsample_bilinear2d",
    "reflection_pad1d",
    "reflection_pad2d",
    "replication_pad1d",
    "replication_pad2d",
    "maximum",
    "minimum",
    "clamp_max",
    "clamp_min",
}


def _per_call(name, target, args, targs, out, r):
    """Rules that need the op itself (same arguments, tangents in place of the input)."""
    T = targs[0]
    nd = args[0].ndim if _tensor(args[0]) else 0
    if name in ("split", "split_with_sizes", "unbind", "chunk", "split_copy", "unbind_copy"):
        dim = args[2] if name != "unbind" and len(args) > 2 else (args[1] if len(args) > 1 else 0)
        if name in ("unbind", "unbind_copy"):
            return tuple(T.unbind(_dim(dim, nd)))
        return tuple(target(T, args[1], _dim(dim, nd)))
    if name in ("sum", "mean"):
        dims = args[1] if len(args) > 1 and args[1] is not None else list(range(nd))
        dims = [dims] if isinstance(dims, int) else list(dims) or list(range(nd))
        keep = args[2] if len(args) > 2 else False
        fn = torch.sum if name == "sum" else torch.mean
        res = fn(T, [_dim(d, nd) for d in dims], keepdim=keep)
        return res.to(out.dtype)
    if name in ("maximum", "minimum"):
        a, b = args[0], args[1]
        ta = full(targs[0], out.shape) if targs[0] is not None else 0
        tb = full(targs[1], out.shape) if targs[1] is not None else 0
        wins = (a > b) if name == "maximum" else (a < b)
        share = wins.to(out.dtype) + 0.5 * (a == b).to(out.dtype)  # autograd splits ties
        return ta * share + tb * (1 - share)
    if name in ("clamp_min", "clamp_max"):
        z, bound = args[0], args[1]
        keep = (z >= bound) if name == "clamp_min" else (z <= bound)
        return T * keep
    # ops acting on (batch, channels, spatial…): fold the directions into the batch
    x = args[0]
    folded = T.reshape(r * x.shape[0], *x.shape[1:])
    return target(folded, *args[1:]).reshape(r, *out.shape)


def generic_tangent(target, args, kwargs, targs, dep_positions, r):
    """Forward-mode AD on one op along every direction: ``vmap(jvp)``."""
    flat = list(args)

    def g(*vals):
        local = list(flat)
        for pos, v in zip(dep_positions, vals):
            local[pos] = v
        return target(*local, **kwargs)

    primals = tuple(args[p] for p in dep_positions)
    tangents = tuple(
        targs[p] if targs[p] is not None else args[p].new_zeros(r, *args[p].shape)
        for p in dep_positions
    )
    return vmap(lambda *ts: jvp(g, primals, ts)[1])(*tangents)


def tangent(name, target, args, kwargs, targs, out, r, dep_positions):
    """The output tangent of one op (``None`` for zero), or of each item for tuple ops.

    ``targs`` mirrors ``args`` with each input-dependent tensor replaced by its tangent
    (``None`` elsewhere); ``dep_positions`` are the positions of those tensors in ``args``.
    """
    if target is operator.getitem:
        return _getitem(args, targs, out, r)
    if name.endswith("_") and not name.startswith("_"):  # in-place views: squeeze_, t_, …
        name = name[:-1]
    plain = not kwargs or name in ("_to_copy", "to", "clone", "contiguous")
    if plain and name in _BY_NAME_PER_CALL and (dep_positions == [0] or "imum" in name):
        return _per_call(name, target, args, targs, out, r)
    if plain and name in RULES:
        res = RULES[name](args, targs, out, r)
        if res is not None:
            return res
    return generic_tangent(target, args, kwargs, targs, dep_positions, r)
