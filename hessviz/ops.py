r"""The op catalogue: what the graph engine knows about each ATen operation's curvature.

Every operation of a captured graph falls in one of four kinds (see :func:`kind`):

- ``"flat"``: no second derivative in its input-dependent arguments — linear maps (``addmm`` with a
  constant weight, ``convolution``, views, ``cat``, sums, means, average pooling, eval-mode batch
  norm, a product with a constant) and piecewise-linear ones (``relu``, ``max_pool``, ``where``,
  ``abs``, ``clamp``: their second derivative is zero wherever it exists).
- ``"unary"``: elementwise ``a = σ(z)`` of one input-dependent tensor; its term is
  :math:`J_z^\top \operatorname{diag}(σ''(z) ⊙ \bar a) J_z`. :data:`DERIVATIVES` gives σ' and σ''
  in closed form where one is cheap; the rest get σ'' from autograd on the op alone.
- ``"product"``: ``a * b`` with both factors input-dependent (broadcasting allowed); its term is
  :math:`J_a^\top \operatorname{diag}(\bar y) J_b + J_b^\top \operatorname{diag}(\bar y) J_a`.
- ``"matmul"``: ``A @ B`` (``mm``/``bmm``) with both factors input-dependent (attention scores);
  its term is the same cross term, contracted over the inner dimension.
- ``"generic"``: anything else (``div`` by an input-dependent tensor, ``layer_norm``, ``softmax``,
  ``mm`` of two input-dependent matrices, …): its term comes from Hessian-vector products of that
  one op, reverse-over-reverse — exact, slower than a closed form.

Ops that read tensor values in Python, draw random numbers or change tensors in place are not
ops of a graph the engine can trust (:data:`REFUSED`).
"""

from __future__ import annotations

import functools
import math
import operator
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._gemm import NUMPY_DTYPES

aten = torch.ops.aten

# -- flat: linear or piecewise linear in all their input-dependent arguments ---------------------
_FLAT_NAMES = """
add sub rsub neg clone alias view _unsafe_view reshape expand expand_as permute transpose t squeeze
unsqueeze flatten unflatten slice select index index_select gather cat stack split
split_with_sizes unbind chunk narrow contiguous sum mean constant_pad_nd pad reflection_pad1d
reflection_pad2d replication_pad1d replication_pad2d avg_pool1d avg_pool2d avg_pool3d
_adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
max_pool1d max_pool2d max_pool3d max_pool2d_with_indices max_pool3d_with_indices
_native_batch_norm_legit_no_training relu leaky_relu hardtanh relu6 threshold clamp clamp_min
clamp_max abs where maximum minimum amax amin max min _to_copy to copy lift_fresh_copy detach
repeat flip roll diagonal diag_embed tril triu upsample_nearest1d upsample_nearest2d
upsample_bilinear2d linspace zeros_like ones_like full_like empty_like sign
unfold im2col col2im masked_fill fill scalar_tensor view_as_real movedim squeeze_copy
unsqueeze_copy view_copy t_copy permute_copy transpose_copy expand_copy slice_copy select_copy
alias_copy unbind_copy split_copy split_with_sizes_copy diagonal_copy as_strided
as_strided_copy new_zeros new_ones new_empty zeros ones full arange empty
"""
FLAT = frozenset(_FLAT_NAMES.split())

# Ops linear in each tensor argument separately: flat when at most one argument depends on x.
MULTILINEAR = frozenset({"mul", "mm", "bmm", "matmul", "addmm", "baddbmm", "addbmm", "einsum",
                         "convolution", "conv1d", "conv2d", "conv3d", "linear", "dot", "mv",
                         "outer", "bilinear", "_convolution", "addcmul", "conv_transpose1d",
                         "conv_transpose2d"})  # fmt: skip
# ``div(a, b)`` is linear in ``a``: flat when only the numerator depends on x.
NUMERATOR_LINEAR = frozenset({"div"})


def _tanh(z, a):
    s1 = 1 - a * a
    return s1, -2 * a * s1


def _sigmoid(z, a):
    s1 = a * (1 - a)
    return s1, s1 * (1 - 2 * a)


def _silu(z, a):
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s)), s * (1 - s) * (2 + z * (1 - 2 * s))


def _reciprocal(z, a):
    a2 = a * a
    return -a2, 2 * a2 * a


#: Closed forms ``(σ'(z), σ''(z))`` given ``z`` and ``a = σ(z)``, for ops whose only argument is
#: the tensor (shared work computed once: the engines call these on every activation).
DERIVATIVES = {
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "silu": _silu,
    "sin": lambda z, a: (torch.cos(z), -a),
    "cos": lambda z, a: (-torch.sin(z), -a),
    "exp": lambda z, a: (a, a),
    "log": lambda z, a: (1 / z, -1 / (z * z)),
    "reciprocal": _reciprocal,
    "sqrt": lambda z, a: (0.5 / a, -0.25 / (a * z)),
    "rsqrt": lambda z, a: (-0.5 * a / z, 0.75 * a / (z * z)),
}


def _tanh_into(z, a, s1, s2):
    tanh_into(z, a)
    torch.addcmul(_one(z), a, a, value=-1, out=s1)
    return a, s1, torch.mul(a, s1, out=s2).mul_(-2)


def _sigmoid_into(z, a, s1, s2):
    torch.sigmoid(z, out=a)
    torch.addcmul(a, a, a, value=-1, out=s1)  # a - a² = a(1 - a)
    return a, s1, torch.addcmul(s1, a, s1, value=-2, out=s2)  # s1 (1 - 2a)


def _sin_into(z, a, s1, s2):
    torch.cos(z, out=s1)  # before ``a`` is written: ``a`` may be ``z``
    return torch.sin(z, out=a), s1, torch.neg(a, out=s2)


#: below this many elements numpy's call overhead (~3 µs) eats its gain
_NUMPY_MIN_NUMEL = 2048
#: tensors smaller than this run single-threaded in ``torch.tanh`` whatever the thread count
_ONE_THREAD_NUMEL = 32768
#: how far ``np.tanh`` may be from ``torch.tanh`` on the probe, in units of the dtype's epsilon
TANH_ULPS = 4


def tanh_into(z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``torch.tanh(z, out=out)``, by numpy's vectorised ``tanh`` where that is safe and faster.

    PyTorch's CPU ``tanh`` costs ~5 ns per float64 element and ~2.5 ns per float32 one on one
    core here, against ~1.7 and ~0.4 ns for ``np.tanh`` (an eighth to a fifth of a plain PINN
    Laplacian's time at width 64). numpy's is taken only for real CPU tensors of at least
    :data:`_NUMPY_MIN_NUMEL` elements, outside tracing and autograd, when ``torch.tanh`` would
    run on at most two threads, and once :func:`numpy_tanh_agrees` has checked it against
    ``torch.tanh`` for this dtype; its values then differ from the module's by at most
    :data:`TANH_ULPS` units in the last place. ``z`` and ``out``: the same shape and dtype;
    returns ``out``.
    """
    if (
        not torch.compiler.is_compiling()  # first: no shape is read while traced
        and z.numel() >= _NUMPY_MIN_NUMEL  # next: small tensors leave at once
        and type(z) is torch.Tensor
        and type(out) is torch.Tensor
        and z.device.type == "cpu"
        and z.dtype in NUMPY_DTYPES
        and out.dtype == z.dtype
        and out.shape == z.shape
        and not (z.requires_grad or out.requires_grad)
        and (z.numel() < _ONE_THREAD_NUMEL or torch.get_num_threads() <= 2)
        and numpy_tanh_agrees(z.dtype)
    ):
        np.tanh(z.numpy(), out=out.numpy())
        return out
    return torch.tanh(z, out=out)


@functools.cache
def numpy_tanh_agrees(dtype: torch.dtype) -> bool:
    """Whether ``np.tanh`` matches ``torch.tanh`` in ``dtype`` on a probe of ±0, subnormals,
    magnitudes from the smallest normal to beyond saturation, ±inf and NaN: within
    :data:`TANH_ULPS` relative, zeros with their sign, NaN where torch has NaN, and no numpy
    warning. Checked once per dtype; where it fails, :func:`tanh_into` keeps ``torch.tanh``."""
    info = torch.finfo(dtype)
    mags = torch.logspace(math.log10(info.tiny), 2.5, 2000, dtype=torch.float64).to(dtype)
    special = torch.tensor([0.0, info.tiny / 4, 1.0, math.inf, math.nan], dtype=torch.float64)
    z = torch.cat([mags, special.to(dtype)])
    z = torch.cat([z, -z])
    expected = torch.tanh(z)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = torch.from_numpy(np.tanh(z.numpy()))
    except Exception:  # noqa: BLE001 - any trouble means: keep torch's
        return False
    nan = torch.isnan(expected)
    if not torch.equal(nan, torch.isnan(got)):
        return False
    e, g = expected[~nan], got[~nan]
    zero = e == 0
    if not (torch.equal(g[zero], e[zero]) and torch.equal(torch.signbit(g), torch.signbit(e))):
        return False
    return bool(((g - e).abs() <= TANH_ULPS * info.eps * e.abs()).all())


_ONES: dict = {}


def _one(z: torch.Tensor) -> torch.Tensor:
    """A 0-d one of ``z``'s dtype and device (made once)."""
    key = (z.dtype, z.device)
    one = _ONES.get(key)
    if one is None:
        one = _ONES[key] = torch.ones((), dtype=z.dtype, device=z.device)
    return one


#: ``(z, a, s1, s2) ↦ (σ(z), σ'(z), σ''(z))`` written into the given buffers (``a``, ``s1``,
#: ``s2``, each shaped like ``z``; ``a`` may be ``z`` itself): the same closed forms as
#: :data:`DERIVATIVES`, for kernels that keep their temporaries between calls
#: (:class:`hessviz._memory.Workspace`). ``σ(z)`` is the op itself (``torch.sigmoid``,
#: ``torch.sin``; ``tanh`` by :func:`tanh_into`, numpy's where faster, within
#: :data:`TANH_ULPS`), so only an activation module that is exactly that op may use these.
DERIVATIVES_INTO = {"tanh": _tanh_into, "sigmoid": _sigmoid_into, "sin": _sin_into}


def _np_tanh(z: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> None:
    a = np.tanh(z, out=z)
    np.multiply(a, a, out=s1)
    np.subtract(1, s1, out=s1)
    np.multiply(a, s1, out=s2)
    s2 *= -2


def np_sigmoid_into(z: np.ndarray) -> np.ndarray:
    """``σ(z) = 1 / (1 + e⁻ᶻ)`` written into ``z`` (returned), without overflow warnings."""
    np.negative(z, out=z)
    with np.errstate(over="ignore"):  # exp(-z) = inf far below 0: σ = 1 / inf = 0, exactly
        a = np.exp(z, out=z)
    a += 1
    return np.reciprocal(a, out=a)


def _np_sigmoid(z: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> None:
    a = np_sigmoid_into(z)
    np.multiply(a, a, out=s1)
    np.subtract(a, s1, out=s1)  # a - a² = a(1 - a)
    np.multiply(a, -2, out=s2)
    s2 += 1
    s2 *= s1  # s1 (1 - 2a)


def _np_sin(z: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> None:
    np.cos(z, out=s1)  # before z is overwritten by sin
    np.sin(z, out=z)
    np.negative(z, out=s2)


#: ``(z, s1, s2) ↦ None``, writing ``σ(z)`` into ``z``, ``σ'(z)`` into ``s1`` and ``σ''(z)``
#: into ``s2`` (numpy arrays of one shape): the same closed forms as :data:`DERIVATIVES_INTO`,
#: for the numpy chain kernel (:mod:`hessviz.structured.chain_numpy`, run by
#: :func:`hessviz.compile` where it proves itself against the eager kernel). ``σ(z)`` is numpy's
#: ``tanh``, ``sin`` and ``1 / (1 + e⁻ᶻ)``.
NUMPY_DERIVATIVES = {"tanh": _np_tanh, "sigmoid": _np_sigmoid, "sin": _np_sin}


def autograd_derivatives(fn, z: torch.Tensor):
    """``(σ(z), σ'(z), σ''(z))`` of an elementwise ``fn`` by autograd on it alone.

    For activations without a closed form in :data:`DERIVATIVES`. ``fn`` gets a non-leaf copy of
    ``z``, so a forward that works in place (``z.tanh_()``) neither fails nor changes ``z``.
    """
    with torch.enable_grad():
        zz = z.detach().clone().requires_grad_(True)
        a = fn(zz * 1)
        (s1,) = torch.autograd.grad(a.sum(), zz, create_graph=True)
        s2 = torch.autograd.grad(s1.sum(), zz)[0] if s1.requires_grad else torch.zeros_like(z)
    return a.detach(), s1.detach(), s2


#: Elementwise ops of one tensor (possibly with scalar arguments) whose σ'' comes from autograd.
UNARY = frozenset(DERIVATIVES) | frozenset(
    """
erf erfc expm1 log1p log2 log10 exp2 sinh cosh asinh acosh atanh atan asin acos tan softplus elu
celu selu gelu mish logit log_sigmoid hardswish hardsigmoid softshrink hardshrink sinc square
pow special_erfcx xlogy lgamma digamma
""".split()
)

#: Ops the engine never builds a plan around (the reason is shown to the user).
REFUSED = {
    "_local_scalar_dense": "it reads a tensor value in Python (.item(), float(t), `if t > 0`)",
    "item": "it reads a tensor value in Python (.item(), float(t), `if t > 0`)",
    "is_nonzero": "it branches on a tensor value in Python (`if t:`)",
    "equal": "it compares tensors in Python (torch.equal)",
    "nonzero": "its shapes depend on tensor values (nonzero / boolean masks)",
    "masked_select": "its shapes depend on tensor values (boolean masks)",
    "unique": "its shapes depend on tensor values (unique)",
    "native_dropout": "it draws random numbers (dropout in training mode)",
    "bernoulli": "it draws random numbers",
    "rand": "it draws random numbers",
    "randn": "it draws random numbers",
    "rand_like": "it draws random numbers",
    "randn_like": "it draws random numbers",
    "normal": "it draws random numbers",
    "uniform": "it draws random numbers",
    "multinomial": "it draws random numbers",
    "copy_": "it changes a tensor in place that the graph cannot follow",
}


def op_name(target) -> str:
    """``aten.tanh.default`` → ``"tanh"``; ``operator.getitem`` → ``"getitem"``."""
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "overloadpacket", None)
    name = getattr(packet, "__name__", None) or getattr(target, "__name__", str(target))
    return name.split(".")[-1]


def kind(name: str, dependent: list[bool]) -> str:
    """The curvature kind of op ``name`` given which tensor arguments depend on the input.

    ``dependent`` lists, for each tensor argument in order, whether it depends on x.

    Example:
        >>> kind("tanh", [True]), kind("mul", [True, False]), kind("mul", [True, True])
        ('unary', 'flat', 'product')
        >>> kind("div", [True, False]), kind("div", [False, True])
        ('flat', 'generic')
    """
    n_dep = sum(dependent)
    if n_dep == 0 or name in FLAT:
        return "flat"
    if name in MULTILINEAR:
        if n_dep <= 1:
            return "flat"
        if name == "mul" and n_dep == 2:
            return "product"
        if name in ("mm", "bmm") and n_dep == 2:
            return "matmul"
        return "generic"
    if name in NUMERATOR_LINEAR:
        return "flat" if not any(dependent[1:]) else "generic"
    if name in UNARY and n_dep == 1:
        return "unary"
    return "generic"


# -- rows of a batch ------------------------------------------------------------------------------
# With several samples, every input-dependent value keeps sample b in row b of dim 0; each op is
# checked to keep it so. ``_ROWWISE`` ops act on each row alone whenever their input-dependent
# arguments have the output's rank (so dim 0 lines up); the others are checked argument by argument.
_ROWWISE = (UNARY | {"add", "sub", "rsub", "neg", "native_batch_norm", "fill", "sign", "mul",
            "div", "where", "maximum", "minimum", "relu", "leaky_relu", "hardtanh", "threshold",
            "clamp", "clamp_min", "clamp_max", "abs",
            "_to_copy", "to", "clone", "alias", "contiguous", "lift_fresh_copy", "masked_fill",
            "getitem", "_native_batch_norm_legit_no_training", "convolution", "avg_pool1d",
            "avg_pool2d", "avg_pool3d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d",
            "adaptive_avg_pool1d", "max_pool2d_with_indices", "max_pool1d_with_indices",
            "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "replication_pad1d",
            "replication_pad2d", "upsample_nearest1d", "upsample_nearest2d", "upsample_bilinear2d",
            "bmm", "baddbmm", "pow", "atan2", "xlogy", "addcmul"})  # fmt: skip
_ALONG_DIM = {
    "slice",
    "select",
    "index_select",
    "narrow",
    "gather",
    "cat",
    "stack",
    "split",
    "split_with_sizes",
    "unbind",
    "chunk",
    "squeeze",
    "unsqueeze",
    "transpose",
}
_REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "var", "std", "prod",
               "linalg_vector_norm", "norm", "cumsum", "logsumexp"}  # fmt: skip


def _shape(node) -> tuple:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    if isinstance(val, (list, tuple)) and val and isinstance(val[0], torch.Tensor):
        val = val[0]
    return tuple(val.shape) if isinstance(val, torch.Tensor) else ()


def _dims(arg, ndim: int) -> list[int]:
    if arg is None:
        return list(range(ndim))
    items = arg if isinstance(arg, (list, tuple)) else [arg]
    return [d % max(ndim, 1) for d in items] or list(range(ndim))


def mixes_rows(name: str, node, dependent: set, rows: int) -> str:
    """Why ``node`` could mix the samples of a batch ("" when it keeps them apart).

    The invariant: every input-dependent value, read in row-major order, holds the samples one
    after another, ``B`` equal blocks, and its dim 0 is a multiple of ``B`` (so row ``k`` belongs
    to sample ``k // (dim0 / B)``). Views and reshapes keep the order; ops that act row by row
    keep the rows; ops along other dims keep dim 0.
    """
    out = _shape(node)
    if not out or out[0] % rows:
        return "does not keep the batch along dim 0"
    args = list(node.args) + list(node.kwargs.values())
    dep_args = [a for a in args if not isinstance(a, (list, tuple)) and a in dependent]
    for lst in (a for a in args if isinstance(a, (list, tuple))):
        dep_args.extend(b for b in lst if b in dependent)
    same_rows = all(_shape(a)[:1] == out[:1] for a in dep_args)
    base = name.rstrip("_") if not name.startswith("_") else name
    if base == "getitem":
        return ""
    if base in ("view", "_unsafe_view", "reshape", "flatten", "unflatten", "alias", "clone",
                "contiguous"):  # fmt: skip
        return ""
    if base in _ROWWISE or base == "expand":
        if any(len(_shape(a)) != len(out) for a in dep_args) or not same_rows:
            return "broadcasts an input-dependent tensor across the batch"
        if base == "convolution" and node.args[1] in dependent:
            return "uses input-dependent weights"
        return ""
    if not same_rows and base not in _REDUCTIONS:
        return "changes the batch dimension"
    src = _shape(node.args[0][0] if isinstance(node.args[0], (list, tuple)) else node.args[0])
    ndim = len(src)
    if base == "permute":
        return "" if _dims(node.args[1], ndim)[0] == 0 else "moves the batch dimension"
    if base == "t":
        return "moves the batch dimension" if ndim == 2 else ""
    if base == "transpose":
        dims = [node.args[1] % ndim, node.args[2] % ndim]
        return "moves the batch dimension" if 0 in dims else ""
    if base in ("squeeze", "unsqueeze"):
        return "" if same_rows else "moves the batch dimension"
    if base == "slice":
        dim = node.args[1] % ndim if len(node.args) > 1 else 0
        return "" if dim != 0 or same_rows else "slices the batch"
    if base in _ALONG_DIM or base in _REDUCTIONS:
        if base in _REDUCTIONS and (len(node.args) < 2 or node.args[1] in (None, [])):
            return "reduces over the batch"
        dim_arg = node.args[1] if len(node.args) > 1 else 0
        if base == "linalg_vector_norm":
            dim_arg = node.args[2] if len(node.args) > 2 else None
            if dim_arg is None:
                return "reduces over the batch"
        if base in ("split", "split_with_sizes", "chunk"):
            dim_arg = node.args[2] if len(node.args) > 2 else 0
        dims = _dims(dim_arg, ndim + (base == "stack"))
        return "acts along the batch dimension" if 0 in dims else ""
    if base in ("mm", "addmm"):
        b = node.args[1] if base == "mm" else node.args[2]
        return "multiplies by an input-dependent matrix" if b in dependent else ""
    return "is not known to keep the samples of a batch apart"


# -- the activations of hessviz's own models (hv.mlp, the explorer) -------------------------------
class Sin(nn.Module):
    """Elementwise ``sin``: smooth, with curvature of both signs."""

    hessviz_elementwise = True

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(z)


class Square(nn.Module):
    """Elementwise ``z**2``: constant second derivative 2."""

    hessviz_elementwise = True

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * z


@dataclass(frozen=True)
class Activation:
    """One activation offered by :func:`hessviz.mlp` and the explorer.

    Attributes:
        name: its name in ``hv.ACTIVATIONS`` (``"tanh"``).
        module: the ``nn.Module`` class, or ``None`` for ``"linear"`` (no nonlinearity).
        op: the ATen op it captures as (its σ', σ'' come from this catalogue's tables when the
            op has them there; from autograd otherwise).
        piecewise_linear: σ'' = 0 wherever it exists, so every Hessian of the network is zero.
    """

    name: str
    module: type | None
    op: str
    piecewise_linear: bool = False


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("tanh", nn.Tanh, "tanh"),
        Activation("sigmoid", nn.Sigmoid, "sigmoid"),
        Activation("softplus", nn.Softplus, "softplus"),
        Activation("elu", nn.ELU, "elu"),
        Activation("gelu", nn.GELU, "gelu"),
        Activation("silu", nn.SiLU, "silu"),
        Activation("relu", nn.ReLU, "relu", piecewise_linear=True),
        Activation("sin", Sin, "sin"),
        Activation("square", Square, "mul"),
        Activation("linear", None, "", piecewise_linear=True),
    ]
}
