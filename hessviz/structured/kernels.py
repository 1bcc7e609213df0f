"""The layer-wise kernels: one forward pass with Jacobians, one reverse sweep, one GEMM per layer.

Notation: ``u`` is the space Jacobians are carried in — ``x`` itself, or ``z_1`` when the stem
narrows the input (then ``P = ∂z_1/∂x`` maps back). ``G_l = ∂z_l/∂u`` is a
:class:`~.jacobian.Jacobian`: identity, shared by every sample (the stem's), or per sample.
``c_l = σ_l''(z_l) ⊙ ∂y_i/∂a_l`` has shape ``(B, m, K_l)``. Kernels run without autograd: every
derivative here is explicit. Chains of Linear layers and activations on vector samples go to the
leaner :mod:`.chain` kernels.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import _gemm
from .._budget import get_memory_budget
from .._memory import FRESH, Scratch, Workspace, empty, same_bytes
from .._problem import Problem
from . import chain
from .gram import Gram
from .jacobian import Jacobian, scaled_weight
from .layers import Elementwise, Identity, Linear, derivatives_into, parse, plain_settings


@dataclass
class _Activation:
    index: int  # position in the flattened layer list
    name: str
    G: Jacobian  # ∂z_l/∂u
    t: torch.Tensor | None  # tangent ∂z_l/∂x · v: (B, K)
    s1: torch.Tensor  # σ'(z_l): (B, K)
    s2: torch.Tensor  # σ''(z_l): (B, K)


@dataclass
class Pass:
    acts: list[_Activation]
    P: torch.Tensor | None  # (n, r): ∂z_1/∂x when Jacobians are carried w.r.t. z_1, else None
    y: torch.Tensor  # (B, M)
    body: list  # layers from the first activation on
    shapes: list[torch.Size]  # per-sample input shape of each body layer, then the output shape
    stem: list
    stem_shapes: list[torch.Size]
    last: int  # position of the last activation in ``body``
    stem_map: _StemMap | None = None  # the stem's Jacobian (and Gram), kept between calls


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


@dataclass
class _StemMap:
    """The affine stem's Jacobian ``A_T`` ``(n, K_1)``, the same for every sample and every
    call while the stem's tensors and settings stay as they were, and once asked for its Gram
    ``A_Tᵀ A_T`` ``(K_1, K_1)``. Kernels only read both (shared rows are never written)."""

    key: tuple  # the stem's modules (ids), the sample shape, dtype, device
    settings: list  # each stem module's plain attributes (stride, eps, …)
    tensors: list  # copies of the stem's parameters and buffers, as A_T was computed from
    A_T: torch.Tensor
    M: torch.Tensor | None = None
    factored: tuple | None = None  # factor()'s (R, norms), made on first use

    def gram(self) -> torch.Tensor:
        if self.M is None:
            self.M = self.A_T.T @ self.A_T
        return self.M

    def factor(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R, norms)``: ``R`` ``(K_1, K_1)``, upper triangular, with ``RᵀR = A_Tᵀ A_T`` — the R
        of ``A_T``'s QR factorisation (``n ≥ K_1``; backward stable, unlike a Cholesky of the
        Gram) — and ``norms = Σ_j (A_T)_{jk}²`` ``(K_1,)``. The chain Laplacian carries the
        ``K_1`` rows of ``R`` in place of the ``n`` rows of ``A_T``
        (:func:`hessviz.structured.chain.laplacian`'s ``stem``)."""
        if self.factored is None:
            R = torch.linalg.qr(self.A_T, mode="r").R.contiguous()
            self.factored = (R, torch.linalg.vecdot(self.A_T, self.A_T, dim=0))
        return self.factored


#: first stem module → its :class:`_StemMap` (forgotten with the module). At n = 784 with a
#: 256-wide first layer, the Laplacian's Gram is 103 of its 175 MFLOP per call.
_STEM_MAPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stem_map(stem: list, S: torch.Size, X: torch.Tensor) -> _StemMap:
    """The stem's :class:`_StemMap`, reused when every parameter and buffer of the stem still
    equals (``torch.equal``, one read of each) the copy it was computed from: in-place edits,
    ``.data`` writes and replaced tensors are all seen, whatever their version counters say.
    Maps larger than a sixteenth of the memory budget are not kept."""
    modules = [lay.module for lay in stem]
    key = (tuple(map(id, modules)), tuple(S), X.dtype, X.device)
    settings = [plain_settings(m) for m in modules]
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    if torch.compiler.is_compiling():  # traced: nothing to keep between calls
        return _StemMap(key, settings, [], _stem_jacobian(stem, S, X))
    old = _STEM_MAPS.get(modules[0])
    if (
        old is not None
        and old.key == key
        and old.settings == settings
        and len(old.tensors) == len(tensors)
        and all(_same(a, b) for a, b in zip(old.tensors, tensors))
    ):
        return old
    A_T = _stem_jacobian(stem, S, X)
    kept = A_T.numel() * A_T.element_size() + sum(t.numel() * t.element_size() for t in tensors)
    if kept > get_memory_budget() // 16:  # too large to keep beside the model: recomputed
        return _StemMap(key, settings, [], A_T)
    new = _StemMap(key, settings, [t.detach().clone() for t in tensors], A_T)
    _STEM_MAPS[modules[0]] = new
    return new


def _same(copy: torch.Tensor, t: torch.Tensor) -> bool:
    if not (copy.shape == t.shape and copy.dtype == t.dtype and copy.device == t.device):
        return False
    same = same_bytes(copy, t)  # a 256 × 784 float64 weight: 34 µs, torch.equal 160 µs
    return torch.equal(copy, t) if same is None else same


def _stem_jacobian(stem: list, S: torch.Size, X: torch.Tensor) -> torch.Tensor:
    """``(n, K_1)``: the stem's linear part applied to every basis vector of the input."""
    n = X.shape[1]
    if stem and isinstance(stem[0], Linear) and len(S) == 1:
        T, rest = stem[0].module.weight.T, stem[1:]  # no n × n identity for a Linear first layer
    else:
        T, rest = torch.eye(n, dtype=X.dtype, device=X.device).reshape(n, *S), stem
    for lay in rest:
        T = lay.linear(T)
    # Contiguous: products with a transposed view inherit its memory order, and every later
    # GEMM on them would copy first.
    return T.reshape(n, -1).contiguous()


def _push(
    lay,
    J: Jacobian,
    scale: torch.Tensor | None,
    S_in: torch.Size,
    B: int,
    ws: Workspace,
    k: int,
    factored: bool = False,
) -> Jacobian:
    """Carry ``J`` through one affine layer (``k``-th of the body): ``(J · diag(scale)) Aᵀ``
    (``scale`` = σ' or None). A Linear layer's result lives in ``ws`` (role ``("G", k)``: every
    activation keeps its own Jacobian until the kernel ends). ``factored``: ``diag(σ') Wᵀ``
    is kept as its factors (:class:`~.jacobian.Jacobian`), formed only if a later layer
    needs it."""
    linear = isinstance(lay, Linear) and len(S_in) == 1
    if J.factors is not None:  # a factored Jacobian meets its next layer: formed now
        J = Jacobian(scaled_weight(*J.factors, ws, ("G", k, "formed")))
    if scale is not None:
        if J.identity and linear:  # diag(σ') Wᵀ without a GEMM
            W = lay.module.weight
            if factored:
                return Jacobian(factors=(scale, W))
            return Jacobian(scaled_weight(scale, W, ws, ("G", k)))
        # The scaled copy dies with this layer: one buffer serves every layer of its shape.
        buf = None if J.identity else ws("scaled", B, *J.rows.shape[-2:], like=scale)
        J = J.scaled(scale, buf)
    G = J.rows
    r = G.shape[-2]
    if linear:  # one GEMM over all samples and directions
        W = lay.module.weight
        out = ws(("G", k), *G.shape[:-1], W.shape[0], like=G)
        if G.is_contiguous():  # samples and directions fold into the rows of one GEMM
            _gemm.mm(G.view(-1, G.shape[-1]), W.T, out=out.view(-1, W.shape[0]))
        else:
            torch.matmul(G, W.T, out=out)
        return Jacobian(out)
    if J.shared:
        out = lay.linear(G.reshape(r, *S_in)).reshape(r, -1)
    else:
        out = lay.linear(G.reshape(B * r, *S_in)).reshape(B, r, -1)
    # Identity, Dropout and reshapes return views: never hand out the scaled copy. Traced
    # (torch.compile), a copy: comparing storage addresses there is a guard on the addresses,
    # and every call with new buffers would compile the kernel again.
    if torch.compiler.is_compiling():
        return Jacobian(out.clone())
    shares = out.untyped_storage().data_ptr() == G.untyped_storage().data_ptr()
    return Jacobian(out.clone() if shares else out)


def forward(
    layers: list,
    p: Problem,
    X: torch.Tensor,
    *,
    jacobian: bool,
    V: torch.Tensor | None = None,
    ws: Workspace = FRESH,
    factored: bool = False,
) -> Pass:
    """Values, σ', σ'' and (optionally) Jacobians ``G_l`` or tangents ``J_l v`` per activation;
    the Jacobians in ``ws``'s buffers (valid until the kernel's call ends). ``factored``: a
    Jacobian ``diag(σ') Wᵀ`` may stay factored (only the Laplacian reads them so).

    Jacobians and tangents stop at the last activation: the affine tail adds no curvature.
    """
    S = _model_sample_shape(p)
    B, n = X.shape
    a = X.reshape(B, *S)
    first = next((k for k, lay in enumerate(layers) if lay.elementwise), len(layers))
    stem, body = layers[:first], layers[first:]
    last = max([-1] + [k for k, lay in enumerate(body) if lay.elementwise])  # traceable
    stem_shapes = []
    t = None if V is None else V.reshape(B, *S)
    for lay in stem:
        stem_shapes.append(a.shape[1:])
        a = lay.forward(a)
        if t is not None:
            t = lay.linear(t)
    stem_shapes.append(a.shape[1:])
    G, P, stem_map = Jacobian(), None, None
    if jacobian and body and stem:
        stem_map = _stem_map(stem, S, X)
        A_T = stem_map.A_T  # (n, K1): the stem's Jacobian, shared by every sample
        if A_T.shape[1] < n:
            P = A_T  # carry Jacobians w.r.t. z_1 (identity there) and map back once
        else:
            G = Jacobian(A_T)
    acts: list[_Activation] = []
    shapes = []
    scale = None  # σ' of the previous activation, folded into G by the next affine layer
    for k, lay in enumerate(body):
        shapes.append(a.shape[1:])
        more = k < last  # does another activation follow (so Jacobians/tangents are needed)?
        if lay.elementwise:
            if scale is not None:  # two activations in a row: fold the first one's σ' now
                G, scale = G.scaled(scale), None
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
                G, scale = _push(lay, G, scale, shapes[-1], B, ws, k, factored), None
            if more and t is not None:
                t = lay.linear(t)
    shapes.append(a.shape[1:])
    if a[0].numel() != p.M:  # a repeated call's model has another number of outputs
        raise _OutOfDate("the model has another number of outputs than the request's")
    return Pass(acts, P, a.reshape(B, -1), body, shapes, stem, stem_shapes, last, stem_map)


class _OutOfDate(RuntimeError):
    """A plan's kernel met a model that is no longer the one it was made for (the repeated
    call it serves takes the full path, which decides again)."""


def _vjp(lay, d: torch.Tensor, S_in: torch.Size, S_out: torch.Size) -> torch.Tensor:
    """``Aᵀ d`` for ``d`` of shape ``(*lead, K_out)``: ``(*lead, K_in)``."""
    if isinstance(lay, Linear) and len(S_out) == 1:
        return d @ lay.module.weight  # Linear acts on the last dimension: no reshapes
    lead = d.shape[:-1]
    return lay.vjp(d.reshape(-1, *S_out), S_in).reshape(*lead, -1)


def _output_rows(fw: Pass, sel: tuple[int, ...]) -> torch.Tensor:
    """``∂y_i/∂a_L`` at the last activation, ``(m, K_L)``: the affine tail is the same for all
    samples, so the selected one-hot rows go back through it once, not once per sample."""
    tail = range(fw.last + 1, len(fw.body))
    M = fw.y.shape[1]
    if len(tail) == 1 and isinstance(fw.body[-1], Linear) and len(fw.shapes[-1]) == 1:
        W = fw.body[-1].module.weight  # (M, K_L): its rows are the answer
        return W if sel == tuple(range(M)) else W[list(sel)]
    d = torch.eye(M, dtype=fw.y.dtype, device=fw.y.device)[list(sel)]
    for k in reversed(tail):
        d = _vjp(fw.body[k], d, fw.shapes[k], fw.shapes[k + 1])
    return d


def _reverse(fw: Pass, sel: tuple[int, ...], *, tangents: bool = False):
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


def _to_x(fw: Pass, H: torch.Tensor) -> torch.Tensor:
    """``P H Pᵀ``: a Hessian w.r.t. ``z_1`` mapped back to ``x`` (``(B, m, n, n)``)."""
    if fw.P is None:
        return H
    B, m, r, _ = H.shape
    n = fw.P.shape[0]
    # P H first (a batched GEMM with P broadcast, no copies), then one big GEMM (P H) Pᵀ over all
    # samples and outputs; torch.matmul would transpose and copy n × n results here.
    PH = _gemm.bmm(fw.P.expand(B * m, n, r), H.view(B * m, r, r), out=empty(B * m, n, r, like=H))
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
        _gemm.mm(A.reshape(-1, r), P.T, out=out.view(-1, n))
        return
    edges = [n * i // 4 for i in range(5)]
    for a, b in zip(edges[:-1], edges[1:]):
        panel = out[:, a:b, a:]  # rows a:b, from the diagonal block rightwards
        _gemm.bmm(A[:, a:b], P[a:].T.expand(N, r, n - a), out=panel)
        out[:, b:, a:b] = panel[:, :, b - a :].mT


def _x_jacobian(fw: Pass, act: _Activation, scratch=None) -> Jacobian:
    """``∂z_l/∂x`` (``act.G`` maps ``x`` to ``z_1`` through ``P`` first when the stem narrows)."""
    if fw.P is None or act.G.identity:
        return Jacobian(fw.P) if act.G.identity else act.G
    G = act.G.rows  # per sample: the stem's shared map came before the first activation
    B, r, K = G.shape
    n = fw.P.shape[0]
    out = None if scratch is None else scratch(B, n, K, like=G)
    return Jacobian(_gemm.bmm(fw.P.expand(B, n, r), G, out=out))  # matmul would copy both


def narrowing_pays_for(n: int, r: int, rest: int) -> bool:
    return r * r * rest + n * r * r + n * n * r < n * n * (r + rest)


def _narrowing_pays(fw: Pass) -> bool:
    """Whether ``P H_{z_1} Pᵀ`` beats carrying Jacobians in ``x`` for the full Hessian.

    Per output: ``r²·ΣK' + n·r² + n²·r`` (in ``z_1``, then back) against ``n²·(r + ΣK')`` (in
    ``x``), with ``ΣK'`` the widths of the activations after the first. One hidden layer
    (``ΣK' = 0``) is cheapest directly: ``Wᵀ diag(c) W``.
    """
    n, r = fw.P.shape
    rest = sum(a.s1.shape[1] for a in fw.acts[1:])
    return narrowing_pays_for(n, r, rest)


def _x_space_pays(op: str, widths: list[int], n: int) -> bool:
    """Whether carrying Jacobians in ``x`` (the chain kernels) costs less than carrying them
    in ``z_1`` and mapping each back (the general kernels), for hidden ``widths`` ``K_1 … K_L``.

    HVPs carry none; with ``K_1 >= n`` there is nothing to save. The Laplacian's chain kernel
    carries the ``K_1`` rows of the first layer's QR factor in place of ``n``
    (:func:`laplacian_stem`), as many as ``z_1`` has, without applying ``PᵀP`` per sample:
    1.4–1.7× faster than ``z_1`` at ``n = 100`` and ``256``, level at ``784``
    (``benchmarks/stem_rows.py``). The full Hessian maps back once per output (``P H Pᵀ``) and
    goes to ``z_1``; the diagonal maps every layer's Jacobian, ``n·K_1·K_l`` per sample, against
    ``n·K_{l-1}·K_l`` in ``x`` (20% less at ``n = 256`` and equal widths).
    """
    r = widths[0]
    if op in ("hvp", "laplacian") or r >= n:
        return True
    if op != "diagonal":
        return False
    in_x = sum(n * a * b for a, b in zip(widths, widths[1:]))
    in_z = sum(r * a * b for a, b in zip(widths[1:], widths[2:])) + sum(
        n * r * k for k in widths[1:]
    )
    return in_x < in_z


def _chain(layers: list, p: Problem, op: str) -> chain.Chain | None:
    """The layers as a :class:`~hessviz.chain.Chain` (Linear, activation, …, Linear on vector
    samples), or None. Jacobians are carried in ``x``: a first layer narrower than the input is
    left to the general kernels (they carry them in ``z_1``) unless :func:`_x_space_pays`."""
    core = [lay for lay in layers if type(lay) is not Identity]
    linears, acts = core[0::2], core[1::2]
    if (
        len(core) < 3
        or len(core) % 2 == 0
        or len(_model_sample_shape(p)) != 1
        or not all(type(lay) is Linear for lay in linears)
        or not all(type(lay) is Elementwise for lay in acts)
        or not _x_space_pays(op, [lin.module.out_features for lin in linears[:-1]], p.n)
    ):
        return None
    return chain.Chain(
        tuple(lay.module for lay in linears),
        tuple(a.derivs for a in acts),
        tuple(a.module for a in acts),
        tuple(derivatives_into(a.module) for a in acts),
    )


def laplacian_stem(ch: chain.Chain, X: torch.Tensor) -> tuple | None:
    """The chain Laplacian's first-layer rows and norms (``stem`` of
    :func:`hessviz.structured.chain.laplacian`) on ``X`` (``(B, n)``): for a first layer
    narrower than the input (``K_1 < n``), its stem map's :meth:`~_StemMap.factor` (``K_1``
    rows), reused while the layer's tensors stay as they were (compared at every call, as for
    the general kernels' ``PᵀP``); None (``W_1ᵀ``'s ``n`` rows) for any other first layer, or
    where the map is too large to keep."""
    if not chain.narrows(ch):
        return None
    stem = _stem_map([Linear(ch.linears[0])], X.shape[1:], X)
    return stem.factor() if stem.tensors else None


@dataclass(frozen=True)
class ChainRunner:
    """A chain kernel bound to its :class:`~hessviz.structured.chain.Chain`, called like every
    runner: ``(p, X, sel)`` or ``(p, X, V, sel)``. :func:`hessviz.compile` compiles these ahead
    of time, from ``chain`` and ``op``."""

    chain: chain.Chain
    op: str
    #: the temporaries this plan keeps between its calls (one call at a time)
    workspace: Workspace = field(default_factory=lambda: Workspace(keep=True), compare=False)
    #: :func:`~hessviz.structured.chain.chunk_size` per ``(X.shape, dtype, device, m)`` seen
    steps: dict = field(default_factory=dict, compare=False)
    #: the chain holds its layers: ``p`` is not read (:mod:`hessviz._hot` passes its template)
    reads_f = False

    def __call__(self, p: Problem, X: torch.Tensor, *args):
        W, b = chain.weight_and_bias(self.chain.linears[-1])
        if p is not None and W.shape[0] != p.M:
            raise _OutOfDate("the last layer has another number of outputs than the request's")
        if b is not None and (b.dtype != X.dtype or b.device != X.device):
            # the one tensor no derivative reads: f itself fails on x (the full path says why)
            raise _OutOfDate("the last layer's bias has another dtype or device than x")
        if torch.compiler.is_compiling():  # traced: one chunk, the compiled code's own buffers
            return getattr(chain, self.op)(self.chain, X, *args)
        ws = self.workspace
        stem = laplacian_stem(self.chain, X) if self.op == "laplacian" else None
        r = None if stem is None else stem[0].shape[0]
        key = (X.shape, X.dtype, X.device, len(args[-1]), r)
        step = self.steps.get(key)
        if step is None:
            step = self.steps[key] = chain.chunk_size(self.op, self.chain, X, key[-2], r)
        # Kept buffers only on the CPU (a GPU's caching allocator already reuses memory, per
        # stream: buffers kept here would be shared across streams), one thread at a time.
        kept = X.is_cpu and ws.acquire()
        try:
            return chain.run(
                self.op, self.chain, X, *args, ws=ws if kept else FRESH, step=step, stem=stem
            )
        finally:
            if kept:
                ws.release()


@dataclass(frozen=True)
class Runner:
    """A general kernel bound to its parsed layers, called like :class:`ChainRunner`, with
    the Jacobians' buffers kept between calls on the CPU (one call at a time; a concurrent one,
    or one on another device, gets fresh buffers): a fresh 1 MiB Jacobian is 256 page faults,
    a third of a 784-input Laplacian's time here."""

    op: str
    layers: list
    workspace: Workspace = field(default_factory=lambda: Workspace(keep=True), compare=False)

    def __call__(self, p: Problem, X: torch.Tensor, *args):
        kernel = globals()[self.op]
        ws = self.workspace
        kept = X.is_cpu and not torch.compiler.is_compiling() and ws.acquire()
        try:
            return kernel(p, X, *args, layers=self.layers, ws=ws if kept else FRESH)
        finally:
            if kept:
                ws.release()


def runner(op: str, p: Problem) -> Callable | None:
    """The kernel for ``op`` on ``p.f`` with its layers parsed once, called as ``(p, X, sel)``
    or, for HVPs, ``(p, X, V, sel)`` under ``torch.no_grad()`` (what :mod:`hessviz._hot`
    reuses). It holds the model's layers, never the model itself (None when ``p.f`` is a bare
    layer)."""
    layers = parse(p.f)
    if any(lay.module is p.f for lay in layers):
        return None
    ch = _chain(layers, p, op)
    if ch is not None:
        return ChainRunner(ch, op)
    return Runner(op, layers)


def _no_autograd(kernel):
    @functools.wraps(kernel)
    def wrapper(*args, **kwargs):
        with torch.no_grad():
            return kernel(*args, **kwargs)

    return wrapper


def _zeros(p: Problem, X: torch.Tensor, sel, *tail: int) -> torch.Tensor:
    return X.new_zeros(X.shape[0], len(sel), *tail)


@_no_autograd
def hessian(
    p: Problem, X: torch.Tensor, sel: tuple[int, ...], layers=None, ws: Workspace = FRESH
) -> torch.Tensor:
    layers = layers or parse(p.f)
    if (ch := _chain(layers, p, "hessian")) is not None:
        return chain.run("hessian", ch, X, sel)
    fw = forward(layers, p, X, jacobian=True, ws=ws)
    if not fw.acts:
        return _zeros(p, X, sel, p.n, p.n)
    cs, _ = _reverse(fw, sel)
    B, m = X.shape[0], len(sel)
    if fw.P is not None and not _narrowing_pays(fw):
        gram = Gram(B, m, p.n, like=X, ws=ws)
        for act, c in zip(fw.acts, cs):
            gram.add(_x_jacobian(fw, act).rows, c)
        return gram.result()
    gram = Gram(B, m, p.n if fw.P is None else fw.P.shape[1], like=X, ws=ws)
    for act, c in zip(fw.acts, cs):
        gram.add(act.G.rows, c)
    return _to_x(fw, gram.result())


@_no_autograd
def layer_terms(p: Problem, X: torch.Tensor, sel: tuple[int, ...]):
    """``[(index, name, term)]`` with ``term`` of shape ``(B, m, n, n)``; the terms sum to H."""
    fw = forward(parse(p.f), p, X, jacobian=True)
    cs, _ = _reverse(fw, sel) if fw.acts else ([], None)
    r = X.shape[1] if fw.P is None else fw.P.shape[1]
    return [(a.index, a.name, _to_x(fw, _term(a.G, c, r))) for a, c in zip(fw.acts, cs)]


def _term(G: Jacobian, c: torch.Tensor, r: int) -> torch.Tensor:
    """One activation's ``G diag(c) Gᵀ``: ``(B, m, r, r)``."""
    gram = Gram(c.shape[0], c.shape[1], r, like=c)
    gram.add(G.rows, c)
    return gram.result()


@_no_autograd
def diagonal(
    p: Problem, X: torch.Tensor, sel: tuple[int, ...], layers=None, ws: Workspace = FRESH
) -> torch.Tensor:
    r"""``D_ij = Σ_l Σ_k c_{l,ik} (J_l)_{kj}²``: one GEMM per activation with squared Jacobians."""
    layers = layers or parse(p.f)
    if (ch := _chain(layers, p, "diagonal")) is not None:
        return chain.run("diagonal", ch, X, sel)
    fw = forward(layers, p, X, jacobian=True, ws=ws)
    if not fw.acts:
        return _zeros(p, X, sel, p.n)
    cs, _ = _reverse(fw, sel)
    D, scratch = None, Scratch()
    for act, c in zip(fw.acts, cs):
        # per sample: a scratch product or this pass's own G, squared in place; a shared one
        # (the stem's, or P) is kept, later layers may still need it
        D = _x_jacobian(fw, act, scratch).add_diagonal_term(D, c)
    return D


@_no_autograd
def laplacian(
    p: Problem, X: torch.Tensor, sel: tuple[int, ...], layers=None, ws: Workspace = FRESH
) -> torch.Tensor:
    r"""``tr H_i = Σ_l c_l · w_l`` with ``w_l = Σ_j (J_l)_{jk}²``; a narrowing stem enters through
    ``PᵀP`` once (``r × r``), so no ``n``-sized Jacobian is ever formed."""
    layers = layers or parse(p.f)
    if (ch := _chain(layers, p, "laplacian")) is not None:
        return chain.run("laplacian", ch, X, sel, stem=laplacian_stem(ch, X))
    fw = forward(layers, p, X, jacobian=True, ws=ws, factored=True)
    if not fw.acts:
        return _zeros(p, X, sel)
    cs, _ = _reverse(fw, sel)
    M = None if fw.P is None else fw.stem_map.gram()
    L = None
    for act, c in zip(fw.acts, cs):
        w = act.G.squared_column_norms(M, c.shape[-1], c, ws)
        term = c @ w if w.ndim == 1 else torch.bmm(c, w[:, :, None])[..., 0]
        L = term if L is None else L.add_(term)
    return L


@_no_autograd
def hvp(
    p: Problem,
    X: torch.Tensor,
    V: torch.Tensor,
    sel: tuple[int, ...],
    layers=None,
    ws: Workspace = FRESH,
) -> torch.Tensor:
    layers = layers or parse(p.f)
    if (ch := _chain(layers, p, "hvp")) is not None:
        return chain.run("hvp", ch, X, V, sel)
    fw = forward(layers, p, X, jacobian=False, V=V, ws=ws)
    if not fw.acts:
        return _zeros(p, X, sel, p.n)
    _, q = _reverse(fw, sel, tangents=True)
    for k in range(len(fw.stem) - 1, -1, -1):
        q = _vjp(fw.stem[k], q, fw.stem_shapes[k], fw.stem_shapes[k + 1])
    return q.reshape(q.shape[0], q.shape[1], -1)
