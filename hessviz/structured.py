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

More exploits: (1) the affine *stem* before the first activation is the same for every sample;
when it narrows the input (``K_1 < n``, e.g. ``Linear(784, 256)``), Jacobians are carried in the
``K_1``-dimensional space, where the first activation's term is a plain diagonal, and mapped back
once, :math:`H = A^\top H_{z_1} A`, when the cost model says that pays; the Laplacian needs only
column norms there, through :math:`A A^\top` (``K_1 × K_1``). (2) HVPs need no Jacobian at all:
one forward tangent, one reverse sweep with the curvature injected per layer. (3) The affine *tail*
after the last activation is sample-independent: ``∂y_i/∂a_L`` is computed once (for a final
``Linear`` it is a row of its weight), and no Jacobian or tangent is carried through it.
(4) Per-op overhead dominates small models: the common activations have closed-form σ', σ'';
kernels run without autograd recording; every layer's term is one batched GEMM accumulated in
place; temporaries of the same role share one scratch buffer.

Every term is returned by :func:`layer_terms`, so the explorer can show what each layer contributes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import chain, ops
from ._memory import Scratch, empty
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
        # The module may work in place (``inplace=True``, or ``z.tanh_()`` in a user's forward):
        # it gets a copy, so σ' and σ'' below read z, not σ(z).
        if self._closed_form is not None:
            a = self.module(z.clone() if getattr(self.module, "inplace", False) else z)
            return (a, *self._closed_form(self.module, z, a))
        return ops.autograd_derivatives(self.module, z)


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
        return _Elementwise(m).derivs(z)[1:]
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
        return _Elementwise(module, closed[t])
    if getattr(module, "hessviz_elementwise", False):
        return _Elementwise(module)
    for base in _OTHER_ELEMENTWISE:
        if t is base:
            return _Elementwise(module)
    if isinstance(module, nn.Linear) and not _own_forward(module, nn.Linear, "forward"):
        return _Linear(module)
    for base in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if isinstance(module, base) and not _own_forward(module, base, "forward", "_conv_forward"):
            return _Conv(module)
    if t in (nn.Flatten, nn.Unflatten):
        if (getattr(module, "start_dim", None) == 0) or getattr(module, "dim", 1) == 0:
            raise Unsupported(f"{t.__name__} over the batch dimension")
        return _Reshape(module)
    if t in _AVG_POOLS:
        return _Affine(module)
    if t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        if module.training or module.running_var is None:
            raise Unsupported(f"{t.__name__} in training mode")
        return _BatchNormEval(module)
    if t is nn.Identity:
        return _Identity(module)
    if t in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout):
        if module.training and module.p != 0:
            raise Unsupported(f"{t.__name__} in training mode")
        return _Identity(module)  # eval mode, or p = 0: the identity
    raise Unsupported(
        f"layer {t.__name__} is not one the engine knows as affine or elementwise"
        + (" (a subclass that changes forward)" if isinstance(module, _KNOWN_BASES) else "")
    )


_KNOWN_BASES = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
                *_AVG_POOLS, *_OTHER_ELEMENTWISE)  # fmt: skip


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
#
# Notation: ``u`` is the space Jacobians are carried in — ``x`` itself, or ``z_1`` when the stem
# narrows the input (then ``P = ∂z_1/∂x`` maps back). ``G_l = ∂z_l/∂u`` is stored transposed,
# one row per direction of ``u``: ``(B, r, K_l)`` per sample, ``(r, K_l)`` when it is the same
# for every sample (the stem), or ``None`` for the identity. ``c_l = σ_l''(z_l) ⊙ ∂y_i/∂a_l`` has
# shape ``(B, m, K_l)``. Kernels run without autograd: every derivative here is explicit.
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
    P: torch.Tensor | None  # (n, r): ∂z_1/∂x when Jacobians are carried w.r.t. z_1, else None
    y: torch.Tensor  # (B, M)
    body: list  # layers from the first activation on
    shapes: list[torch.Size]  # per-sample input shape of each body layer, then the output shape
    stem: list
    stem_shapes: list[torch.Size]
    last: int  # position of the last activation in ``body``


def _model_sample_shape(p: Problem) -> torch.Size:
    """The per-sample shape ``S`` such that the model sees its input as ``(B, *S)``.

    An unbatched ``x`` gets a batch dimension of 1: ``(5,)`` → ``(1, 5)``; ``(1, 8)`` for a
    ``Conv1d`` is one single-channel signal → ``(1, 1, 8)``. Only when the first convolution
    needs one dimension fewer is a leading 1 read as the user's own batch of one (a
    ``(1, 1, 28, 28)`` image for a ``Conv2d``).
    """
    S = p.sample_shape
    if p.batched:
        return S
    if len(S) >= 2 and S[0] == 1 and isinstance(p.f, nn.Module):
        conv = next((m for m in p.f.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
        if conv is not None and len(S) == len(conv.kernel_size) + 2:
            return S[1:]
    return S


def _stem_jacobian(stem: list, S: torch.Size, X: torch.Tensor) -> torch.Tensor:
    """``(n, K_1)``: the stem's linear part applied to every basis vector of the input."""
    n = X.shape[1]
    if stem and isinstance(stem[0], _Linear) and len(S) == 1:
        T, rest = stem[0].module.weight.T, stem[1:]  # no n × n identity for a Linear first layer
    else:
        T, rest = torch.eye(n, dtype=X.dtype, device=X.device).reshape(n, *S), stem
    for lay in rest:
        T = lay.linear(T)
    # Contiguous: products with a transposed view inherit its memory order, and every later
    # GEMM on them would copy first.
    return T.reshape(n, -1).contiguous()


def _scaled(G: torch.Tensor | None, scale: torch.Tensor, out: torch.Tensor | None = None):
    """``G · diag(scale)`` per sample, ``(B, r, K)``: the Jacobian of an activation's output."""
    if G is None:  # identity, so the Jacobian is diag(σ') itself
        return torch.diag_embed(scale)
    return torch.mul(G, scale[:, None, :], out=out)  # (r, K) or (B, r, K) times (B, 1, K)


def _push(
    lay, G: torch.Tensor | None, scale: torch.Tensor | None, S_in: torch.Size, B: int, scratch
):
    """Carry ``G`` through one affine layer: ``(G · diag(scale)) Aᵀ`` (``scale`` = σ' or None)."""
    linear = isinstance(lay, _Linear) and len(S_in) == 1
    if scale is not None:
        if G is None and linear:  # diag(σ') Wᵀ without a GEMM
            W = lay.module.weight
            G = scale.new_empty(B, W.shape[1], W.shape[0])  # contiguous, unlike Wᵀ
            return torch.mul(scale[:, :, None], W.T, out=G)
        # The scaled copy dies with this layer: it borrows the scratch buffer.
        G = _scaled(G, scale, None if G is None else scratch(B, *G.shape[-2:], like=scale))
    r = G.shape[-2]
    if linear:  # one GEMM over all samples and directions
        W = lay.module.weight
        out = torch.matmul(G, W.T, out=empty(*G.shape[:-1], W.shape[0], like=G))
    elif G.ndim == 2:
        out = lay.linear(G.reshape(r, *S_in)).reshape(r, -1)
    else:
        out = lay.linear(G.reshape(B * r, *S_in)).reshape(B, r, -1)
    # Identity, Dropout and reshapes return views: never hand out the scratch buffer.
    shares = out.untyped_storage().data_ptr() == G.untyped_storage().data_ptr()
    return out.clone() if shares else out


def _forward(
    layers: list, p: Problem, X: torch.Tensor, *, jacobian: bool, V: torch.Tensor | None = None
) -> _Pass:
    """Values, σ', σ'' and (optionally) Jacobians ``G_l`` or tangents ``J_l v`` per activation.

    Jacobians and tangents stop at the last activation: the affine tail adds no curvature.
    """
    S = _model_sample_shape(p)
    B, n = X.shape
    a = X.reshape(B, *S)
    first = next((k for k, lay in enumerate(layers) if lay.elementwise), len(layers))
    stem, body = layers[:first], layers[first:]
    last = max((k for k, lay in enumerate(body) if lay.elementwise), default=-1)
    stem_shapes = []
    t = None if V is None else V.reshape(B, *S)
    for lay in stem:
        stem_shapes.append(a.shape[1:])
        a = lay.forward(a)
        if t is not None:
            t = lay.linear(t)
    stem_shapes.append(a.shape[1:])
    G, P = None, None
    if jacobian and body and stem:
        A_T = _stem_jacobian(stem, S, X)  # (n, K1): the stem's Jacobian, shared by every sample
        if A_T.shape[1] < n:
            P = A_T  # carry Jacobians w.r.t. z_1 (identity there) and map back once
        else:
            G = A_T
    acts: list[_Activation] = []
    shapes = []
    scale = None  # σ' of the previous activation, folded into G by the next affine layer
    scratch = Scratch()
    for k, lay in enumerate(body):
        shapes.append(a.shape[1:])
        more = k < last  # does another activation follow (so Jacobians/tangents are needed)?
        if lay.elementwise:
            if scale is not None:  # two activations in a row: fold the first one's σ' now
                G, scale = _scaled(G, scale), None
            a, s1, s2 = lay.derivs(a)
            tz = None if t is None else t.reshape(B, -1)
            s1f, s2f = s1.reshape(B, -1), s2.reshape(B, -1)
            acts.append(_Activation(first + k, type(lay.module).__name__, G, tz, s1f, s2f))
            if more and jacobian:
                scale = s1f
            if more and t is not None:
                t = t * s1
        else:
            a = lay.forward(a)
            if more and jacobian:
                G, scale = _push(lay, G, scale, shapes[-1], B, scratch), None
            if more and t is not None:
                t = lay.linear(t)
    shapes.append(a.shape[1:])
    return _Pass(acts, P, a.reshape(B, -1), body, shapes, stem, stem_shapes, last)


def _vjp(lay, d: torch.Tensor, S_in: torch.Size, S_out: torch.Size) -> torch.Tensor:
    """``Aᵀ d`` for ``d`` of shape ``(*lead, K_out)``: ``(*lead, K_in)``."""
    if isinstance(lay, _Linear) and len(S_out) == 1:
        return d @ lay.module.weight  # Linear acts on the last dimension: no reshapes
    lead = d.shape[:-1]
    return lay.vjp(d.reshape(-1, *S_out), S_in).reshape(*lead, -1)


def _output_rows(fw: _Pass, sel: tuple[int, ...]) -> torch.Tensor:
    """``∂y_i/∂a_L`` at the last activation, ``(m, K_L)``: the affine tail is the same for all
    samples, so the selected one-hot rows go back through it once, not once per sample."""
    tail = range(fw.last + 1, len(fw.body))
    M = fw.y.shape[1]
    if len(tail) == 1 and isinstance(fw.body[-1], _Linear) and len(fw.shapes[-1]) == 1:
        W = fw.body[-1].module.weight  # (M, K_L): its rows are the answer
        return W if sel == tuple(range(M)) else W[list(sel)]
    d = torch.eye(M, dtype=fw.y.dtype, device=fw.y.device)[list(sel)]
    for k in reversed(tail):
        d = _vjp(fw.body[k], d, fw.shapes[k], fw.shapes[k + 1])
    return d


def _reverse(fw: _Pass, sel: tuple[int, ...], *, tangents: bool = False):
    """One reverse sweep for all selected outputs at once.

    Returns ``c`` — per activation, ``σ'' ⊙ ∂y_i/∂a_l`` of shape ``(B, m, K)`` — and, with
    ``tangents``, ``q`` = Σ_l J_lᵀ(c_l ⊙ J_l v) at ``z_1`` (``(B, m, K_1)``), i.e. the HVP there.
    """
    d = _output_rows(fw, sel)  # (m, K_L), broadcast over the batch until σ' makes it per sample
    q = None
    cs: list[torch.Tensor] = [None] * len(fw.acts)  # type: ignore[list-item]
    k = fw.last
    for ai in range(len(fw.acts) - 1, -1, -1):
        act = fw.acts[ai]
        c = act.s2[:, None, :] * d
        cs[ai] = c
        if tangents:
            ct = c * act.t[:, None, :]
            q = ct if q is None else q.mul_(act.s1[:, None, :]).add_(ct)
        if ai == 0:
            break
        d = act.s1[:, None, :] * d
        k -= 1
        while not fw.body[k].elementwise:  # back through the affine layers in between
            S_in, S_out = fw.shapes[k], fw.shapes[k + 1]
            d = _vjp(fw.body[k], d, S_in, S_out)
            if q is not None:
                q = _vjp(fw.body[k], q, S_in, S_out)
            k -= 1
    return cs, q


def _add_term(
    H: torch.Tensor | None, G: torch.Tensor | None, c: torch.Tensor, scratch=None
) -> torch.Tensor:
    """``H + Gᵀ diag(c) G`` for every sample and output: ``(B, m, r, r)`` (``H`` may be None).

    ``G`` is in the carried layout (rows = directions): the term is ``(G ⊙ c) Gᵀ``, one batched
    GEMM accumulated into ``H`` in place.
    """
    B, m, K = c.shape
    if G is None:  # identity Jacobian: the term is diag(c)
        if H is None:
            H = empty(B, m, K, K, like=c).zero_()
            H.diagonal(dim1=-2, dim2=-1).copy_(c)
            return H
        H.diagonal(dim1=-2, dim2=-1).add_(c)
        return H
    r = G.shape[-2]
    # Written into a contiguous (B, m, r, K) buffer: a broadcast product may pick another memory
    # order, and the GEMM below needs these rows contiguous.
    Gc = empty(B, m, r, K, like=c) if scratch is None else scratch(B, m, r, K, like=c)
    torch.mul(G if G.ndim == 2 else G[:, None], c[:, :, None, :], out=Gc)
    if G.ndim == 2:  # shared: fold samples and outputs into the rows of one GEMM
        if H is None:
            H = empty(B, m, r, r, like=c)
            torch.mm(Gc.view(-1, K), G.T, out=H.view(-1, r))
            return H
        H.view(-1, r).addmm_(Gc.view(-1, K), G.T)
        return H
    if H is None:
        H = empty(B, m, r, r, like=c)
        torch.bmm(Gc.view(B, m * r, K), G.mT, out=H.view(B, m * r, r))
        return H
    H.view(B, m * r, r).baddbmm_(Gc.view(B, m * r, K), G.mT)
    return H


def _to_x(fw: _Pass, H: torch.Tensor) -> torch.Tensor:
    """``P H Pᵀ``: a Hessian w.r.t. ``z_1`` mapped back to ``x`` (``(B, m, n, n)``)."""
    if fw.P is None:
        return H
    B, m, r, _ = H.shape
    n = fw.P.shape[0]
    # P H first (a batched GEMM with P broadcast, no copies), then one big GEMM (P H) Pᵀ over all
    # samples and outputs; torch.matmul would transpose and copy n × n results here.
    PH = torch.bmm(fw.P.expand(B * m, n, r), H.view(B * m, r, r), out=empty(B * m, n, r, like=H))
    out = empty(B, m, n, n, like=H)
    _symmetric_product(PH, fw.P, out.view(B * m, n, n))
    return out


def _symmetric_product(A: torch.Tensor, P: torch.Tensor, out: torch.Tensor) -> None:
    """``out = A Pᵀ`` (``A``: ``(N, n, r)``, ``P``: ``(n, r)``) for a product known symmetric.

    From ``n = 128`` on, only the upper block triangle is computed — four row panels, 5/8 of the
    GEMM work, written in place — and mirrored below the diagonal. Measured here: 5–8% faster at
    n = 128–256 and 20% at n = 784 than one GEMM; smaller blocks lose to the mirror copy.
    """
    N, n, r = A.shape
    if n < 128:
        torch.mm(A.reshape(-1, r), P.T, out=out.view(-1, n))
        return
    edges = [n * i // 4 for i in range(5)]
    for a, b in zip(edges[:-1], edges[1:]):
        panel = out[:, a:b, a:]  # rows a:b, from the diagonal block rightwards
        torch.bmm(A[:, a:b], P[a:].T.expand(N, r, n - a), out=panel)
        out[:, b:, a:b] = panel[:, :, b - a :].mT


def _x_jacobian(fw: _Pass, act: _Activation, scratch=None) -> torch.Tensor | None:
    """``∂z_l/∂x`` as ``(B, n, K)``, shared ``(n, K)``, or None (identity)."""
    if fw.P is None or act.G is None:
        return fw.P if act.G is None else act.G
    B, r, K = act.G.shape
    n = fw.P.shape[0]
    out = None if scratch is None else scratch(B, n, K, like=act.G)
    return torch.bmm(fw.P.expand(B, n, r), act.G, out=out)  # matmul would copy both operands


def _narrowing_pays_for(n: int, r: int, rest: int) -> bool:
    return r * r * rest + n * r * r + n * n * r < n * n * (r + rest)


def _narrowing_pays(fw: _Pass) -> bool:
    """Whether ``P H_{z_1} Pᵀ`` beats carrying Jacobians in ``x`` for the full Hessian.

    Per output: ``r²·ΣK' + n·r² + n²·r`` (in ``z_1``, then back) against ``n²·(r + ΣK')`` (in
    ``x``), with ``ΣK'`` the widths of the activations after the first. One hidden layer
    (``ΣK' = 0``) is cheapest directly: ``Wᵀ diag(c) W``.
    """
    n, r = fw.P.shape
    rest = sum(a.s1.shape[1] for a in fw.acts[1:])
    return _narrowing_pays_for(n, r, rest)


def _chain(layers: list, p: Problem, op: str) -> chain.Chain | None:
    """The layers as a :class:`~hessviz.chain.Chain` (Linear, activation, …, Linear on vector
    samples), or None. Jacobians are carried in ``x``: a first layer narrower than the input is
    left to the general kernels (they carry them in ``z_1``), except for HVPs, which carry none."""
    core = [lay for lay in layers if type(lay) is not _Identity]
    linears, acts = core[0::2], core[1::2]
    if (
        len(core) < 3
        or len(core) % 2 == 0
        or len(_model_sample_shape(p)) != 1
        or not all(type(lay) is _Linear for lay in linears)
        or not all(type(lay) is _Elementwise for lay in acts)
        or (op != "hvp" and linears[0].module.out_features < p.n)
    ):
        return None
    return chain.Chain(tuple(lay.module for lay in linears), tuple(a.derivs for a in acts))


def runner(op: str, p: Problem) -> Callable:
    """The kernel for ``op`` on ``p.f`` with its layers parsed once: called as ``(X, sel)``, or
    ``(X, V, sel)`` for HVPs, under ``torch.no_grad()`` (what :mod:`hessviz._hot` reuses)."""
    layers = parse(p.f)
    ch = _chain(layers, p, op)
    if ch is not None:
        return functools.partial(getattr(chain, op), ch)
    return functools.partial(globals()[op], p, layers=layers)


def _no_autograd(kernel):
    @functools.wraps(kernel)
    def wrapper(*args, **kwargs):
        with torch.no_grad():
            return kernel(*args, **kwargs)

    return wrapper


def _zeros(p: Problem, X: torch.Tensor, sel, *tail: int) -> torch.Tensor:
    return X.new_zeros(X.shape[0], len(sel), *tail)


@_no_autograd
def hessian(p: Problem, X: torch.Tensor, sel: tuple[int, ...], layers=None) -> torch.Tensor:
    layers = layers or parse(p.f)
    if (ch := _chain(layers, p, "hessian")) is not None:
        return chain.hessian(ch, X, sel)
    fw = _forward(layers, p, X, jacobian=True)
    if not fw.acts:
        return _zeros(p, X, sel, p.n, p.n)
    cs, _ = _reverse(fw, sel)
    H, scratch = None, Scratch()
    if fw.P is not None and not _narrowing_pays(fw):
        for act, c in zip(fw.acts, cs):
            H = _add_term(H, _x_jacobian(fw, act), c, scratch)
        return H
    for act, c in zip(fw.acts, cs):
        H = _add_term(H, act.G, c, scratch)
    return _to_x(fw, H)


@_no_autograd
def layer_terms(p: Problem, X: torch.Tensor, sel: tuple[int, ...]):
    """``[(index, name, term)]`` with ``term`` of shape ``(B, m, n, n)``; the terms sum to H."""
    fw = _forward(parse(p.f), p, X, jacobian=True)
    cs, _ = _reverse(fw, sel) if fw.acts else ([], None)
    return [(a.index, a.name, _to_x(fw, _add_term(None, a.G, c))) for a, c in zip(fw.acts, cs)]


@_no_autograd
def diagonal(p: Problem, X: torch.Tensor, sel: tuple[int, ...], layers=None) -> torch.Tensor:
    r"""``D_ij = Σ_l Σ_k c_{l,ik} (J_l)_{kj}²``: one GEMM per activation with squared Jacobians."""
    layers = layers or parse(p.f)
    if (ch := _chain(layers, p, "diagonal")) is not None:
        return chain.diagonal(ch, X, sel)
    fw = _forward(layers, p, X, jacobian=True)
    if not fw.acts:
        return _zeros(p, X, sel, p.n)
    cs, _ = _reverse(fw, sel)
    D, scratch = None, Scratch()
    for act, c in zip(fw.acts, cs):
        J = _x_jacobian(fw, act, scratch)
        if J is None:  # identity: the term is c itself
            D = c.contiguous() if D is None else D.add_(c)
        elif J.ndim == 2:  # shared (the stem's): keep it, later layers may still need P
            B, m, K = c.shape
            term_rows = c.reshape(-1, K)
            if D is None:
                D = (term_rows @ (J * J).T).view(B, m, -1)
            else:
                D.view(B * m, -1).addmm_(term_rows, (J * J).T)
        else:  # per sample: a scratch product or this pass's own G, squared in place
            sq = J.square_().mT
            D = torch.bmm(c, sq) if D is None else D.baddbmm_(c, sq)
    return D


def _column_sq_norms(G: torch.Tensor | None, M: torch.Tensor | None, K: int, like: torch.Tensor):
    """Squared column norms ``Σ_j (J_l)_{jk}²`` of ``J_l = P G``, given ``M = PᵀP``.

    ``G`` or ``M`` None stands for the identity. Returns ``(K,)`` or ``(B, K)``. A per-sample
    ``G`` is consumed (overwritten).
    """
    if G is None:
        return like.new_ones(K) if M is None else M.diagonal()
    if M is None:
        return (G * G if G.ndim == 2 else G.square_()).sum(-2)
    if G.ndim == 2:
        return ((M @ G) * G).sum(-2)
    MG = torch.bmm(M.expand(G.shape[0], *M.shape), G)  # (PᵀP) G, per sample
    return MG.mul_(G).sum(-2)


@_no_autograd
def laplacian(p: Problem, X: torch.Tensor, sel: tuple[int, ...], layers=None) -> torch.Tensor:
    r"""``tr H_i = Σ_l c_l · w_l`` with ``w_l = Σ_j (J_l)_{jk}²``; a narrowing stem enters through
    ``PᵀP`` once (``r × r``), so no ``n``-sized Jacobian is ever formed."""
    layers = layers or parse(p.f)
    if (ch := _chain(layers, p, "laplacian")) is not None:
        return chain.laplacian(ch, X, sel)
    fw = _forward(layers, p, X, jacobian=True)
    if not fw.acts:
        return _zeros(p, X, sel)
    cs, _ = _reverse(fw, sel)
    M = None if fw.P is None else fw.P.T @ fw.P
    L = None
    for act, c in zip(fw.acts, cs):
        w = _column_sq_norms(act.G, M, c.shape[-1], c)
        term = c @ w if w.ndim == 1 else torch.bmm(c, w[:, :, None])[..., 0]
        L = term if L is None else L.add_(term)
    return L


@_no_autograd
def hvp(
    p: Problem, X: torch.Tensor, V: torch.Tensor, sel: tuple[int, ...], layers=None
) -> torch.Tensor:
    layers = layers or parse(p.f)
    if (ch := _chain(layers, p, "hvp")) is not None:
        return chain.hvp(ch, X, V, sel)
    fw = _forward(layers, p, X, jacobian=False, V=V)
    if not fw.acts:
        return _zeros(p, X, sel, p.n)
    _, q = _reverse(fw, sel, tangents=True)
    for k in range(len(fw.stem) - 1, -1, -1):
        q = _vjp(fw.stem[k], q, fw.stem_shapes[k], fw.stem_shapes[k + 1])
    return q.reshape(q.shape[0], q.shape[1], -1)


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
    """Estimate structured vs torch.func costs (multiply-adds per sample) from a :func:`check` pass.

    Structured: the forward Jacobian (``r`` directions through the body up to the last
    activation) plus the assembly, ``m`` batched GEMMs of ``r × K`` by ``K × r`` per activation
    (and ``P H Pᵀ`` when the stem narrows). torch.func's ``jacfwd(jacrev)``: ``n`` tangents
    through the forward pass and through ``m`` reverse passes, each about twice a forward.
    """
    n, m = p.n, p.m
    shapes = fw.stem_shapes[:-1] + fw.shapes
    layers = fw.stem + fw.body
    flops = [
        s_in.numel() if lay.elementwise else lay.flops(s_in.numel(), s_out.numel())
        for lay, s_in, s_out in zip(layers, shapes[:-1], shapes[1:])
    ]
    fwd = sum(flops)
    jac_body = sum(flops[len(fw.stem) : len(fw.stem) + max(fw.last, 0)])
    K1 = fw.stem_shapes[-1].numel()
    Ks = [a.s1.shape[1] for a in fw.acts]
    rest = sum(Ks[1:])
    if fw.stem and K1 < n:
        r = K1
        if _narrowing_pays_for(n, r, rest):
            assembly = m * (r * r * rest + n * r * r + n * n * r)
        else:
            assembly = n * r * rest + m * n * n * (r + rest)
    else:
        r = n
        assembly = m * n * n * sum(Ks)
    structured = r * jac_body + assembly
    func = n * (1 + 2 * m) * fwd + m * n * n
    K_max = max(Ks, default=0)
    return Cost(structured, func, r * sum(Ks) + n * K_max, r * K_max + r * r + r * n + n * n)
