r"""The layer-wise engine: exact input Hessians of affine/elementwise networks from their structure.

For a network that alternates affine maps (Linear, Conv, Flatten, average pooling, eval-mode
BatchNorm, …) and elementwise activations ``a_l = σ_l(z_l)``, the Hessian of output ``i`` w.r.t.
the input ``x`` is exactly

.. math:: H_i = \sum_l J_l^\top \operatorname{diag}\big(σ_l''(z_l) ⊙ ∂y_i/∂a_l\big)\, J_l,
          \qquad J_l = ∂z_l/∂x,

because affine maps have no curvature: every second derivative comes from one activation layer.
``J_l`` is carried forward with the values (one pass), ``∂y_i/∂a_l`` comes from one reverse sweep
vectorised over the selected outputs, and the sum is a few batched matrix products. Its diagonal
is :math:`\sum_l \sum_k c_{l,k} (J_l)_{kj}^2` with ``c_l = σ_l'' ⊙ ∂y_i/∂a_l`` — about the cost of
one forward Jacobian, far cheaper than ``n`` Hessian-vector products.

Two more exploits: (1) the affine *stem* before the first activation is the same for every sample;
when it narrows the input (``K_1 < n``, e.g. ``Linear(784, 256)``), Jacobians are carried in the
``K_1``-dimensional space and mapped back once: :math:`H = A^\top H_{z_1} A`. (2) HVPs need no
Jacobian at all: one forward tangent, one reverse sweep with the curvature injected per layer.

Every term is returned by :func:`layer_terms`, so the explorer can show what each layer contributes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._problem import Problem


class Unsupported(Exception):
    """The function is not a network this engine understands (the message says which layer)."""


# --------------------------------------------------------------------------------------------
# Layers: one small class per kind, each knows its forward map, its linear part and its transpose.
# --------------------------------------------------------------------------------------------


class _Affine:
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


class _Linear(_Affine):
    def linear(self, t):
        return t @ self.module.weight.T

    def vjp(self, d, in_shape):
        return d @ self.module.weight

    def flops(self, in_numel, out_numel):
        return float(in_numel * out_numel)


class _Conv(_Affine):
    def linear(self, t):
        return self.module._conv_forward(t, self.module.weight, None)

    def flops(self, in_numel, out_numel):
        w = self.module.weight
        return float(out_numel * w[0].numel())


class _Identity(_Affine):
    def forward(self, a):
        return a

    def linear(self, t):
        return t

    def vjp(self, d, in_shape):
        return d


class _Reshape(_Affine):
    def vjp(self, d, in_shape):
        return d.reshape(d.shape[0], *in_shape)


class _BatchNormEval(_Affine):
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


class _Elementwise:
    """An elementwise activation; ``derivs`` returns ``(σ(z), σ'(z), σ''(z))``.

    The value always comes from the module itself (so the engine reproduces ``f`` exactly);
    σ' and σ'' come from a closed form when one is known, else from autograd on the module.
    """

    elementwise = True

    def __init__(self, module: nn.Module, closed_form=None):
        self.module = module
        self._closed_form = closed_form

    def derivs(self, z: torch.Tensor):
        if self._closed_form is not None:
            a = self.module(z)
            return (a, *self._closed_form(self.module, z, a))
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            a = self.module(zz)
            (s1,) = torch.autograd.grad(a.sum(), zz, create_graph=True)
            s2 = None
            if s1.requires_grad:
                (s2,) = torch.autograd.grad(s1.sum(), zz, allow_unused=True)
        return a.detach(), s1.detach(), torch.zeros_like(z) if s2 is None else s2


def _tanh(m, z, a):
    s1 = 1 - a * a
    return s1, -2 * a * s1


def _sigmoid(m, z, a):
    s1 = a * (1 - a)
    return s1, s1 * (1 - 2 * a)


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
        return _Elementwise(m).derivs(z)[1:]
    pdf = torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    cdf = 0.5 * (1 + torch.erf(z * (1 / math.sqrt(2))))
    return cdf + z * pdf, pdf * (2 - z * z)


def _silu(m, z, a):
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s)), s * (1 - s) * (2 + z * (1 - 2 * s))


def _relu(m, z, a):
    return (z > 0).to(z.dtype), torch.zeros_like(z)


def _leaky_relu(m, z, a):
    slope = torch.full_like(z, m.negative_slope)
    return torch.where(z > 0, torch.ones_like(z), slope), torch.zeros_like(z)


def _sin(m, z, a):
    return torch.cos(z), -a


def _square(m, z, a):
    return 2 * z, torch.full_like(z, 2.0)


def _closed_forms():
    from .models import Sin, Square

    return {
        nn.Tanh: _tanh,
        nn.Sigmoid: _sigmoid,
        nn.Softplus: _softplus,
        nn.ELU: _elu,
        nn.GELU: _gelu,
        nn.SiLU: _silu,
        nn.ReLU: _relu,
        nn.LeakyReLU: _leaky_relu,
        Sin: _sin,
        Square: _square,
    }


# Elementwise modules whose derivatives come from autograd (no closed form needed).
_OTHER_ELEMENTWISE = (
    nn.Mish, nn.Softsign, nn.Hardtanh, nn.CELU, nn.SELU, nn.Tanhshrink, nn.LogSigmoid,
    nn.Hardswish, nn.Hardsigmoid, nn.Softshrink, nn.Hardshrink, nn.Threshold,
)  # fmt: skip
_AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
              nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)  # fmt: skip


def _wrap(module: nn.Module):
    closed = _closed_forms()
    t = type(module)
    if t in closed:
        return _Elementwise(module, closed[t])
    if isinstance(module, _OTHER_ELEMENTWISE) or getattr(module, "hessviz_elementwise", False):
        return _Elementwise(module)
    if isinstance(module, nn.Linear):
        return _Linear(module)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return _Conv(module)
    if isinstance(module, (nn.Flatten, nn.Unflatten)):
        if (getattr(module, "start_dim", None) == 0) or getattr(module, "dim", 1) == 0:
            raise Unsupported(f"{t.__name__} over the batch dimension")
        return _Reshape(module)
    if isinstance(module, _AVG_POOLS):
        return _Affine(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.training or module.running_var is None:
            raise Unsupported(f"{t.__name__} in training mode")
        return _BatchNormEval(module)
    if isinstance(module, (nn.Identity, nn.modules.dropout._DropoutNd)):
        if module.training and not isinstance(module, nn.Identity):
            raise Unsupported(f"{t.__name__} in training mode")
        return _Identity(module)
    raise Unsupported(f"layer {t.__name__} is neither affine nor elementwise")


def _modules(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        if type(model).forward is not nn.Sequential.forward:
            raise Unsupported(f"{type(model).__name__} overrides Sequential.forward")
        return [leaf for child in model for leaf in _modules(child)]
    return [model]


def parse(f: object) -> list:
    """The layers of ``f`` as engine layers; raises :class:`Unsupported` with the reason."""
    if not isinstance(f, nn.Module):
        raise Unsupported("f is not an nn.Module (a plain function has no layers to exploit)")
    layers = [_wrap(m) for m in _modules(f)]
    for lay in layers:
        if lay.module._forward_hooks or lay.module._forward_pre_hooks:
            raise Unsupported(f"{type(lay.module).__name__} has forward hooks")
    return layers


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


@dataclass
class _Activation:
    index: int  # position in the flattened layer list
    name: str
    G: torch.Tensor | None  # ∂z_l/∂u: (B, r, K) per sample, (r, K) shared, or None = identity
    t: torch.Tensor | None  # tangent ∂z_l/∂x · v: (B, K)
    s1: torch.Tensor  # σ'(z_l): (B, K)
    s2: torch.Tensor  # σ''(z_l): (B, K)


@dataclass
class _Pass:
    acts: list[_Activation]
    P: torch.Tensor | None  # (n, r): x-space Jacobian of the stem when it narrows, else None
    y: torch.Tensor  # (B, M)
    body: list  # layers from the first activation on
    shapes: list[torch.Size]  # per-sample input shape of each body layer, then the output shape
    stem: list
    stem_shapes: list[torch.Size]


def _model_sample_shape(p: Problem) -> torch.Size:
    """The per-sample shape ``S`` such that the model sees its input as ``(B, *S)``."""
    if p.batched:
        return p.sample_shape
    if len(p.sample_shape) >= 2 and p.sample_shape[0] == 1:  # e.g. a (1, 1, 28, 28) image
        return p.sample_shape[1:]
    return p.sample_shape  # a batch dimension of 1 is added: (5,) → (1, 5)


def _stem_jacobian(stem: list, S: torch.Size, X: torch.Tensor) -> torch.Tensor:
    """``(n, K_1)``: the stem's linear part applied to every basis vector of the input."""
    n = X.shape[1]
    if stem and isinstance(stem[0], _Linear) and len(S) == 1:
        T, rest = stem[0].module.weight.T, stem[1:]  # no n × n identity for a Linear first layer
    else:
        T, rest = torch.eye(n, dtype=X.dtype, device=X.device).reshape(n, *S), stem
    for lay in rest:
        T = lay.linear(T)
    return T.reshape(n, -1)


def _forward(
    layers: list, p: Problem, X: torch.Tensor, *, jacobian: bool, V: torch.Tensor | None = None
) -> _Pass:
    S = _model_sample_shape(p)
    B, n = X.shape
    a = X.reshape(B, *S)
    first = next((k for k, lay in enumerate(layers) if lay.elementwise), len(layers))
    stem, body = layers[:first], layers[first:]
    stem_shapes = []
    t = None if V is None else V.reshape(B, *S)
    for lay in stem:
        stem_shapes.append(a.shape[1:])
        a = lay.forward(a)
        if t is not None:
            t = lay.linear(t)
    stem_shapes.append(a.shape[1:])
    G, P = None, None
    if jacobian and body:
        A_T = _stem_jacobian(stem, S, X)  # (n, K1): the stem's Jacobian, shared by every sample
        if A_T.shape[1] < n:
            P = A_T  # carry Jacobians w.r.t. z_1 (identity there) and map back once
        else:
            G = A_T
    acts: list[_Activation] = []
    shapes = []
    for k, lay in enumerate(body):
        shapes.append(a.shape[1:])
        if lay.elementwise:
            a, s1, s2 = lay.derivs(a)
            s1, s2 = s1.reshape(B, -1), s2.reshape(B, -1)
            tz = None if t is None else t.reshape(B, -1)
            acts.append(_Activation(first + k, type(lay.module).__name__, G, tz, s1, s2))
            if jacobian:
                if G is None:
                    G = torch.diag_embed(s1)
                else:
                    G = G * s1[:, None, :]  # (r, K) * (B, 1, K) broadcasts to per sample
            if t is not None:
                t = t * s1.reshape(t.shape)
        else:
            a = lay.forward(a)
            if jacobian:
                r = G.shape[-2]
                if G.ndim == 2:
                    G = lay.linear(G.reshape(r, *shapes[-1])).reshape(r, -1)
                else:
                    G = lay.linear(G.reshape(B * r, *shapes[-1])).reshape(B, r, -1)
            if t is not None:
                t = lay.linear(t)
    shapes.append(a.shape[1:])
    return _Pass(acts, P, a.reshape(B, -1), body, shapes, stem, stem_shapes)


def _reverse(fw: _Pass, sel: tuple[int, ...], *, tangents: bool = False):
    """One reverse sweep for all selected outputs at once.

    Returns ``c`` — per activation, ``σ'' ⊙ ∂y_i/∂a_l`` of shape ``(m, B, K)`` — and, with
    ``tangents``, ``q`` = Σ_l J_lᵀ(c_l ⊙ J_l v) at ``z_1`` (``(m, B, K_1)``), i.e. the HVP there.
    """
    B, M = fw.y.shape
    m = len(sel)
    d = fw.y.new_zeros(m, B, M)
    d[torch.arange(m, device=d.device), :, torch.tensor(sel, device=d.device)] = 1.0
    q = torch.zeros_like(d) if tangents else None
    cs: list[torch.Tensor] = [None] * len(fw.acts)  # type: ignore[list-item]
    ai = len(fw.acts) - 1
    for k in range(len(fw.body) - 1, -1, -1):
        lay = fw.body[k]
        if lay.elementwise:
            act = fw.acts[ai]
            c = act.s2 * d
            cs[ai] = c
            if q is not None:
                q = act.s1 * q + c * act.t
            if ai == 0:
                break
            d = act.s1 * d
            ai -= 1
        else:
            S_in, S_out = fw.shapes[k], fw.shapes[k + 1]
            if q is not None:
                both = torch.cat([d, q]).reshape(2 * m * B, *S_out)
                both = lay.vjp(both, S_in).reshape(2, m, B, -1)
                d, q = both[0], both[1]
            else:
                d = lay.vjp(d.reshape(m * B, *S_out), S_in).reshape(m, B, -1)
    return cs, q


def _term(G: torch.Tensor | None, c: torch.Tensor) -> torch.Tensor:
    """``Gᵀ diag(c) G`` in the carried space: ``(B, m, r, r)``."""
    if G is None:
        return torch.diag_embed(c).transpose(0, 1)
    if G.ndim == 2:
        return ((G * c[..., None, :]) @ G.T).transpose(0, 1)
    cb = c.transpose(0, 1)  # (B, m, K)
    return (G[:, None] * cb[:, :, None, :]) @ G[:, None].transpose(-1, -2)


def _to_x(fw: _Pass, H: torch.Tensor) -> torch.Tensor:
    return H if fw.P is None else fw.P @ H @ fw.P.T


def _x_jacobian(fw: _Pass, act: _Activation) -> torch.Tensor:
    """``∂z_l/∂x`` as ``(B, n, K)`` or shared ``(n, K)``."""
    if fw.P is None:
        return act.G
    return fw.P if act.G is None else fw.P @ act.G


def _zeros(p: Problem, X: torch.Tensor, sel, *tail: int) -> torch.Tensor:
    return X.new_zeros(X.shape[0], len(sel), *tail)


def hessian(p: Problem, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    layers = parse(p.f)
    fw = _forward(layers, p, X, jacobian=True)
    if not fw.acts:
        return _zeros(p, X, sel, p.n, p.n)
    cs, _ = _reverse(fw, sel)
    H = sum(_term(act.G, c) for act, c in zip(fw.acts, cs))
    return _to_x(fw, H)


def layer_terms(p: Problem, X: torch.Tensor, sel: tuple[int, ...]):
    """``[(index, name, term)]`` with ``term`` of shape ``(B, m, n, n)``; the terms sum to H."""
    layers = parse(p.f)
    fw = _forward(layers, p, X, jacobian=True)
    cs, _ = _reverse(fw, sel) if fw.acts else ([], None)
    return [(a.index, a.name, _to_x(fw, _term(a.G, c))) for a, c in zip(fw.acts, cs)]


def diagonal(p: Problem, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    fw = _forward(parse(p.f), p, X, jacobian=True)
    D = _zeros(p, X, sel, p.n)
    if not fw.acts:
        return D
    cs, _ = _reverse(fw, sel)
    for act, c in zip(fw.acts, cs):
        J = _x_jacobian(fw, act)
        sq = J * J
        if sq.ndim == 2:
            D += (c @ sq.T).transpose(0, 1)
        else:
            D += c.transpose(0, 1) @ sq.transpose(1, 2)
    return D


def laplacian(p: Problem, X: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    fw = _forward(parse(p.f), p, X, jacobian=True)
    L = _zeros(p, X, sel)
    if not fw.acts:
        return L
    cs, _ = _reverse(fw, sel)
    for act, c in zip(fw.acts, cs):
        J = _x_jacobian(fw, act)
        colsq = (J * J).sum(-2)  # (B, K) or (K,)
        L += (c * colsq).sum(-1).transpose(0, 1)
    return L


def hvp(p: Problem, X: torch.Tensor, V: torch.Tensor, sel: tuple[int, ...]) -> torch.Tensor:
    fw = _forward(parse(p.f), p, X, jacobian=False, V=V)
    if not fw.acts:
        return _zeros(p, X, sel, p.n)
    _, q = _reverse(fw, sel, tangents=True)
    m, B = q.shape[:2]
    for lay, S_in, S_out in zip(
        reversed(fw.stem), reversed(fw.stem_shapes[:-1]), reversed(fw.stem_shapes[1:])
    ):
        q = lay.vjp(q.reshape(m * B, *S_out), S_in)
    return q.reshape(m, B, -1).transpose(0, 1)


# --------------------------------------------------------------------------------------------
# Cost model (used by method="auto" and the memory budget)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """Per-sample estimates: ``flops`` for a full Hessian of ``m`` outputs, ``bytes`` of work."""

    structured_flops: float
    func_flops: float
    work_elems_per_sample: float
    work_elems_per_output: float


def check(p: Problem, y: torch.Tensor) -> _Pass:
    """Run the engine's forward on the first sample and check it reproduces ``f`` exactly.

    Raises :class:`Unsupported` if the layers cannot be parsed, the layout assumption (samples
    along dim 0) does not hold for this input, or the values differ from ``f(x)`` (``y``).
    """
    layers = parse(p.f)
    try:
        with torch.no_grad():
            fw = _forward(layers, p, p.X[:1], jacobian=False)
    except Exception as err:  # the layer-by-layer run does not accept this input layout
        raise Unsupported(f"the layers cannot be run one by one on this input ({err})") from err
    expected = y.reshape(p.B, -1)[:1]
    tol = 1e3 * torch.finfo(y.dtype).eps * (1 + float(expected.abs().max()))
    if fw.y.shape != expected.shape or not torch.allclose(fw.y, expected, rtol=0, atol=tol):
        raise Unsupported("running the layers one by one does not reproduce f(x)")
    return fw


def cost(p: Problem, fw: _Pass) -> Cost:
    """Estimate structured vs torch.func costs from the layer shapes of a :func:`check` pass."""
    n, m = p.n, p.m
    shapes = fw.stem_shapes[:-1] + fw.shapes
    fwd = 0.0
    for lay, (s_in, s_out) in zip(fw.stem + fw.body, zip(shapes[:-1], shapes[1:])):
        fwd += lay.flops(s_in.numel(), s_out.numel()) if not lay.elementwise else s_in.numel()
    K1 = fw.stem_shapes[-1].numel()
    r = min(n, K1)
    K_acts = sum(a.s1.shape[1] for a in fw.acts)
    K_max = max((a.s1.shape[1] for a in fw.acts), default=0)
    body = fwd - sum(
        lay.flops(a.numel(), b.numel())
        for lay, a, b in zip(fw.stem, fw.stem_shapes[:-1], fw.stem_shapes[1:])
    )
    structured = r * body + m * r * r * K_acts
    if r < n:
        structured += m * (n * r * r + n * n * r)
    func = n * (1 + m) * 3 * fwd + m * n * n
    return Cost(structured, func, r * K_acts, r * K_max + r * r + n * n)
