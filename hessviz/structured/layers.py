"""The layers the layer-wise engine knows: affine maps and elementwise activations.

:func:`parse` turns an ``nn.Sequential`` into engine layers — each an :class:`Affine` map
(``linear`` applies its linear part to a stack of tangents, ``vjp`` its transpose) or an
:class:`Elementwise` activation (``derivs`` gives ``σ``, ``σ'``, ``σ''``) — or raises
:class:`Unsupported` with the reason. Layers are matched by exact type, or as a subclass that
does not replace ``forward``: a LoRA-style ``Linear`` subclass is not the map its weight says.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

# the hooks torch.nn.modules.module.register_module_forward_hook and
# register_module_forward_pre_hook register for every module: dicts torch fills in place, which
# no public function reads (tests/test_numpy_repeat.py proves these are the ones it fills)
from torch.nn.modules.module import _global_forward_hooks as _GLOBAL_HOOKS
from torch.nn.modules.module import _global_forward_pre_hooks as _GLOBAL_PRE_HOOKS

from .. import ops


class Unsupported(Exception):
    """The function is not a network this engine understands (the message says which layer)."""


# --------------------------------------------------------------------------------------------
# Layers: one small class per kind, each knows its forward map, its linear part and its transpose.
# --------------------------------------------------------------------------------------------


class Affine:
    """An affine layer ``z = A a + b``. ``linear`` applies ``A`` to a stack of tangents."""

    elementwise = False

    def __init__(self, module: nn.Module):
        self.module = module

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.module(a)

    def linear(self, t: torch.Tensor) -> torch.Tensor:  # (N, *S_in) -> (N, *S_out)
        return self.module(t)

    def vjp(self, d: torch.Tensor, in_shape: torch.Size) -> torch.Tensor:
        """``Aᵀ d`` for a stack ``d`` of shape ``(N, *S_out)``: autograd through the linear part."""
        with torch.enable_grad():
            t0 = d.new_zeros((d.shape[0], *in_shape), requires_grad=True)
            (g,) = torch.autograd.grad(self.linear(t0), t0, d)
        return g

    def flops(self, in_numel: int, out_numel: int) -> float:
        return float(out_numel)


class Linear(Affine):
    def linear(self, t):
        return t @ self.module.weight.T

    def vjp(self, d, in_shape):
        return d @ self.module.weight

    def flops(self, in_numel, out_numel):
        return float(in_numel * out_numel)


class Conv(Affine):
    def linear(self, t):
        return self.module._conv_forward(t, self.module.weight, None)

    def flops(self, in_numel, out_numel):
        w = self.module.weight
        return float(out_numel * w[0].numel())


class Identity(Affine):
    def forward(self, a):
        return a

    def linear(self, t):
        return t

    def vjp(self, d, in_shape):
        return d


class Reshape(Affine):
    def vjp(self, d, in_shape):
        return d.reshape(d.shape[0], *in_shape)


class BatchNormEval(Affine):
    def _scale(self, ndim: int) -> torch.Tensor:
        m = self.module
        scale = torch.rsqrt(m.running_var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight
        return scale.reshape(-1, *([1] * (ndim - 2)))

    def linear(self, t):
        return t * self._scale(t.ndim)

    def vjp(self, d, in_shape):
        return d * self._scale(d.ndim)


class Elementwise:
    """An elementwise activation; ``derivs`` returns ``(σ(z), σ'(z), σ''(z))``.

    The value always comes from the module itself (so the engine reproduces ``f`` exactly);
    σ' and σ'' come from a closed form when one is known, else from autograd on the module.
    """

    elementwise = True

    def __init__(self, module: nn.Module, closed_form=None):
        self.module = module
        self._closed_form = closed_form

    def derivs(self, z: torch.Tensor):
        # The module may work in place (``inplace=True``, or ``z.tanh_()`` in a user's forward):
        # it gets a copy, so σ' and σ'' below read z, not σ(z).
        if self._closed_form is not None:
            a = self.module(z.clone() if getattr(self.module, "inplace", False) else z)
            return (a, *self._closed_form(self.module, z, a))
        return ops.autograd_derivatives(self.module, z)


def plain_settings(module: nn.Module) -> list:
    """``(name, value)`` of ``module``'s plain attributes (``beta``, ``stride``, ``eps``, …),
    sorted: what a kernel may assume unchanged between calls besides its tensors."""
    return sorted(
        (k, v) for k, v in vars(module).items() if isinstance(v, (bool, int, float, str, tuple))
    )


#: the exact module types whose ``forward`` is one op (``nn.Tanh`` is ``torch.tanh``; a
#: subclass may compute something else)
_EXACT_OPS = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", ops.Sin: "sin"}


def derivatives_into(module: nn.Module, table: dict = ops.DERIVATIVES_INTO):
    """``table``'s function (:data:`hessviz.ops.DERIVATIVES_INTO`, or
    :data:`hessviz.ops.NUMPY_DERIVATIVES`) for ``module``, or None: only for the exact module
    types whose ``forward`` is that op (:data:`_EXACT_OPS`)."""
    op = _EXACT_OPS.get(type(module))
    return None if op is None else table[op]


def _from_catalogue(op: str):
    """σ' and σ'' of a parameter-free activation, from the op catalogue (:mod:`hessviz.ops`)."""
    return lambda m, z, a: ops.DERIVATIVES[op](z, a)


def _softplus(m, z, a):
    # Mirror torch's threshold: above it softplus is the identity (σ' = 1, σ'' = 0 exactly).
    linear = z * m.beta > m.threshold
    s = torch.sigmoid(z * m.beta)
    s1 = torch.where(linear, torch.ones_like(s), s)
    return s1, torch.where(linear, torch.zeros_like(s), m.beta * s * (1 - s))


def _elu(m, z, a):
    pos = z > 0
    curved = a + m.alpha
    return torch.where(pos, torch.ones_like(z), curved), torch.where(pos, 0 * z, curved)


_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _gelu(m, z, a):
    if m.approximate != "none":
        return Elementwise(m).derivs(z)[1:]
    pdf = torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    cdf = 0.5 * (1 + torch.erf(z * (1 / math.sqrt(2))))
    return cdf + z * pdf, pdf * (2 - z * z)


def _relu(m, z, a):
    return (z > 0).to(z.dtype), torch.zeros_like(z)


def _leaky_relu(m, z, a):
    slope = torch.full_like(z, m.negative_slope)
    return torch.where(z > 0, torch.ones_like(z), slope), torch.zeros_like(z)


def _square(m, z, a):
    return 2 * z, torch.full_like(z, 2.0)


@functools.cache
def _closed_forms():
    return {
        nn.Tanh: _from_catalogue("tanh"),
        nn.Sigmoid: _from_catalogue("sigmoid"),
        nn.Softplus: _softplus,
        nn.ELU: _elu,
        nn.GELU: _gelu,
        nn.SiLU: _from_catalogue("silu"),
        nn.ReLU: _relu,
        nn.LeakyReLU: _leaky_relu,
        ops.Sin: _from_catalogue("sin"),
        ops.Square: _square,
    }


# Elementwise modules whose derivatives come from autograd (no closed form needed).
_OTHER_ELEMENTWISE = (
    nn.Mish, nn.Softsign, nn.Hardtanh, nn.CELU, nn.SELU, nn.Tanhshrink, nn.LogSigmoid,
    nn.Hardswish, nn.Hardsigmoid, nn.Softshrink, nn.Hardshrink, nn.Threshold,
)  # fmt: skip
_AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
              nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)  # fmt: skip


def _own_forward(module: nn.Module, base: type, *methods: str) -> bool:
    """Whether ``module`` (an instance of ``base``) replaces one of ``base``'s ``methods``.

    A subclass of ``nn.Linear`` with its own ``forward`` (a LoRA adapter, a squared weight) is not
    the affine map ``weight``/``bias`` describe: the engine must not take it for one.
    """
    return any(getattr(type(module), name) is not getattr(base, name) for name in methods)


def _wrap(module: nn.Module):
    closed = _closed_forms()
    t = type(module)
    if t in closed:  # exact types only: a subclass may compute something else
        return Elementwise(module, closed[t])
    if getattr(module, "hessviz_elementwise", False):
        return Elementwise(module)
    for base in _OTHER_ELEMENTWISE:
        if t is base:
            return Elementwise(module)
    if isinstance(module, nn.Linear) and not _own_forward(module, nn.Linear, "forward"):
        return Linear(module)
    for base in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if isinstance(module, base) and not _own_forward(module, base, "forward", "_conv_forward"):
            return Conv(module)
    if t in (nn.Flatten, nn.Unflatten):
        if (getattr(module, "start_dim", None) == 0) or getattr(module, "dim", 1) == 0:
            raise Unsupported(f"{t.__name__} over the batch dimension")
        return Reshape(module)
    if t in _AVG_POOLS:
        return Affine(module)
    if t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        if module.training or module.running_var is None:
            raise Unsupported(f"{t.__name__} in training mode")
        return BatchNormEval(module)
    if t is nn.Identity:
        return Identity(module)
    if t in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout):
        if module.training and module.p != 0:
            raise Unsupported(f"{t.__name__} in training mode")
        return Identity(module)  # eval mode, or p = 0: the identity
    raise Unsupported(
        f"layer {t.__name__} is not one the engine knows as affine or elementwise"
        + (" (a subclass that changes forward)" if isinstance(module, _KNOWN_BASES) else "")
    )


_KNOWN_BASES = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
                *_AVG_POOLS, *_OTHER_ELEMENTWISE)  # fmt: skip


def _modules(model: nn.Module) -> list[nn.Module]:
    if "forward" in model.__dict__:  # model.forward = …: its type no longer says what it does
        raise Unsupported(f"{type(model).__name__} has its forward replaced on the instance")
    if isinstance(model, nn.Sequential):
        if type(model).forward is not nn.Sequential.forward:
            raise Unsupported(f"{type(model).__name__} overrides Sequential.forward")
        return [leaf for child in model for leaf in _modules(child)]
    return [model]


def global_forward_hooks() -> bool:
    """Whether a forward hook for every module is registered: it may change any layer's
    output, and the layer-wise kernels compute the layers' maps themselves."""
    return bool(_GLOBAL_HOOKS or _GLOBAL_PRE_HOOKS)


def parse(f: object) -> list:
    """The layers of ``f`` as engine layers; raises :class:`Unsupported` with the reason."""
    if not isinstance(f, nn.Module):
        raise Unsupported("f is not an nn.Module (a plain function has no layers to exploit)")
    if global_forward_hooks():
        raise Unsupported("a forward hook is registered for every module (global hooks)")
    layers = [_wrap(m) for m in _modules(f)]
    for lay in layers:
        if lay.module._forward_hooks or lay.module._forward_pre_hooks:
            raise Unsupported(f"{type(lay.module).__name__} has forward hooks")
    return layers
