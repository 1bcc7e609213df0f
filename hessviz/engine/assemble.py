r"""Assembly: the Hessian of a captured graph as a sum of per-node terms.

For outputs ``y_i`` of a graph of operations, the second-order chain rule gives exactly

.. math::
    H_i = \sum_{\text{nodes } g} \sum_{a, b} J_a^\top\, ∇^2_{ab} \langle \bar g_i, g \rangle\, J_b,

where ``a, b`` run over ``g``'s input-dependent arguments, ``J_a = ∂a/∂x`` and ``\bar g_i =
∂y_i/∂g`` is the adjoint of ``g``'s value. Linear and piecewise-linear nodes have no second
derivative and drop out; what is left are the *taps* found by :mod:`.capture`. One call:

1. one pass through the graph computes the values and carries the Jacobians forward, ``r``
   directions at once (:mod:`.rules`, first-order rules only);
2. one reverse pass, vectorised over the selected outputs, gives every tap's adjoint;
3. each tap adds its term: ``Jᵀ diag(σ''(z) ⊙ ḡ) J`` (unary), ``J_aᵀ diag(ḡ) J_b + J_bᵀ diag(ḡ)
   J_a`` (product), or, for any other op, ``Jᵀ (∇²⟨ḡ, g⟩ J)`` with reverse-over-reverse
   Hessian-vector products of that op alone — one batched GEMM per tap.

A Hessian-vector product carries the single direction ``v`` instead of ``r = n`` directions and
pulls the curvature back with one more reverse pass. Shapes: ``X`` is ``(B, n)``; with a batch
the rows of every input-dependent node along dim 0 are the samples (checked by :mod:`.capture`),
without one (``B = 1``) every element belongs to the single sample.
"""

from __future__ import annotations

import torch
from torch import fx
from torch.func import grad, vjp, vmap

from .. import ops
from .capture import Graph, Tap, tensor_args
from .rules import full, tangent


def _unary_derivatives(name: str, fn, z, a):
    """``(σ'(z), σ''(z))`` of an elementwise op: closed form where known (``fn`` is None), else
    autograd on the op alone."""
    if fn is None:
        return ops.DERIVATIVES[name](z, a)
    return ops.autograd_derivatives(fn, z)[1:]


class Executor:
    """Runs a captured graph with Jacobians (or one tangent) and assembles the terms."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes = [n for n in graph.module.graph.nodes if n.op in ("call_function", "get_attr")]
        self.placeholders = [n for n in graph.module.graph.nodes if n.op == "placeholder"]
        self.output = next(n for n in graph.module.graph.nodes if n.op == "output")
        self.tap_of = {t.op: t for t in graph.taps}
        self._compiled: list | None = None
        self.unary = {t.op for t in graph.taps if t.kind == "unary"}
        # Tangents are carried only where a tap needs them: nodes after the last curvature
        # node (an output layer, say) add nothing and are never differentiated forward.
        self.dep = set()
        stack = [u for t in graph.taps for u in t.inputs]
        stack += [t.op for t in graph.taps if t.kind == "unary"]  # their σ'' is computed there
        while stack:
            node = stack.pop()
            if node in self.dep or node not in graph.dependent:
                continue
            self.dep.add(node)
            stack.extend(a for a in tensor_args(node) if a in graph.dependent)
        # unary ops with only the tensor argument can use the closed forms in ops
        self.closed = {
            n
            for n in self.unary
            if len(n.args) == 1 and not n.kwargs and ops.op_name(n.target) in ops.DERIVATIVES
        }

    # -- the forward pass: values, and tangents of the input-dependent nodes -------------------
    def _steps(self):
        """Per node, what the forward pass needs to know, worked out once per plan."""
        steps = []
        for node in self.nodes:
            name = ops.op_name(node.target) if node.op == "call_function" else ""
            step = {"node": node, "name": name, "dep": node in self.dep, "unary": None}
            if node in self.unary:
                (u,) = self.tap_of[node].inputs
                closed = node in self.closed
                step["unary"] = (u, None if closed else list(tensor_args(node)).index(u))
            elif step["dep"]:
                step["keep"] = name in _SHARED_OK
                step["positions"] = [
                    k for k, a in enumerate(node.args) if isinstance(a, fx.Node) and a in self.dep
                ]
            steps.append(step)
        return steps

    def forward(self, tensors, x, T0):
        """Values (with autograd history from ``x``), tangents and σ'' of unary taps."""
        if self._compiled is None:
            self._compiled = self._steps()
        env: dict[fx.Node, object] = {}
        tan: dict[fx.Node, object] = {}
        s2: dict[fx.Node, torch.Tensor] = {}
        shapes: dict[fx.Node, torch.Size | None] = {}
        for node, value in zip(self.placeholders, [*tensors, x]):
            env[node] = value
            shapes[node] = value.shape
        tan[self.placeholders[-1]] = T0
        r = T0.shape[0]
        gm = self.graph.module
        dep = self.dep
        lookup = env.__getitem__
        for step in self._compiled:
            node = step["node"]
            if node.op == "get_attr":
                env[node] = getattr(gm, node.target)
                continue
            out = node.target(*fx.map_arg(node.args, lookup), **fx.map_arg(node.kwargs, lookup))
            env[node] = out
            # shapes as computed: an in-place view (squeeze_) later changes the object's shape
            shapes[node] = out.shape if isinstance(out, torch.Tensor) else None
            if not step["dep"]:
                continue
            with torch.no_grad():
                if step["unary"] is not None:
                    u, pos = step["unary"]
                    fn = None if pos is None else _bind(node, env, pos)
                    s1, s2[node] = _unary_derivatives(
                        step["name"], fn, env[u].detach(), out.detach()
                    )
                    tan[node] = tan[u] * s1
                    continue
                keep = step["keep"]

                def tangent_of(a, keep=keep):
                    if a not in dep:
                        return None
                    t = tan.get(a)
                    shape = shapes.get(a)
                    if isinstance(t, torch.Tensor) and shape is not None and not keep:
                        if t.shape[1:] != shape:
                            t = t.expand(t.shape[0], *shape)  # shared → per sample
                    return t

                tan[node] = tangent(
                    step["name"],
                    node.target,
                    fx.map_arg(node.args, lambda a: _detach(env[a])),
                    fx.map_arg(node.kwargs, lambda a: _detach(env[a])),
                    fx.map_arg(node.args, tangent_of),
                    _detach(out),
                    r,
                    step["positions"],
                )
        out = self.output.args[0]
        y = env[out[0] if isinstance(out, (list, tuple)) else out]
        return env, tan, s2, y

    # -- adjoints ----------------------------------------------------------------------------
    def adjoints(self, env, y, rows):
        """Per tap: ``(m, *S_tap)``, the adjoints of the selected outputs (None if unused).

        The autograd graph is kept: a one-at-a-time retry and the HVP pull-back need it.
        """
        B = self.graph.rows
        Y = y.reshape(B, -1)
        taps = [env[t.node] for t in self.graph.taps]
        m = rows.shape[0]
        E = rows[:, None, :].expand(m, B, rows.shape[1])
        wanted = [t for t in taps if t.requires_grad]
        if not wanted or not Y.requires_grad:
            return [None] * len(taps)
        try:
            grads = torch.autograd.grad(
                Y, wanted, E, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
        except RuntimeError:  # an op without a batching rule for its backward: one at a time
            per = [
                torch.autograd.grad(Y, wanted, E[i], retain_graph=True, allow_unused=True)
                for i in range(m)
            ]
            grads = [
                None if per[0][k] is None else torch.stack([g[k] for g in per])
                for k in range(len(wanted))
            ]
        it = iter(grads)
        return [next(it) if t.requires_grad else None for t in taps]


#: Ops whose rules accept a tangent shared by all samples, ``(r, 1, *S)`` for a value
#: ``(B, *S)``: the input's unit vectors stay shared through the affine stem (every sample has
#: the same Jacobian there), and the first activation's term is one GEMM for the whole batch.
_SHARED_OK = frozenset({"addmm", "mm", "add", "sub", "mul", "div", "neg", "_to_copy", "clone"})


def _detach(v):
    return v.detach() if isinstance(v, torch.Tensor) else v


def _bind(node: fx.Node, env: dict, pos: int):
    """``w ↦ op(…, w, …)``: the op with every argument but tensor number ``pos`` fixed."""
    count = [-1]

    def swap(a, w):
        count[0] += 1
        return w if count[0] == pos else _detach(env[a])

    def g(w):
        count[0] = -1
        args = fx.map_arg(node.args, lambda a: swap(a, w))
        kwargs = fx.map_arg(node.kwargs, lambda a: _detach(env[a]))
        return node.target(*args, **kwargs)

    return g


def _op_fn(tap: Tap, env: dict):
    """``g(*inputs)``: the tap's op with its other arguments fixed (its item for tuple ops)."""
    import operator

    def g(*vals):
        local = dict(zip(tap.inputs, vals))
        args = fx.map_arg(tap.op.args, lambda a: local[a] if a in local else _detach(env[a]))
        kwargs = fx.map_arg(tap.op.kwargs, lambda a: local[a] if a in local else _detach(env[a]))
        out = tap.op.target(*args, **kwargs)
        if tap.node is not tap.op:
            out = operator.getitem(out, tap.node.args[1])
        return out

    return g


def _per_sample(T: torch.Tensor, lead: int) -> torch.Tensor:
    """``(r, *S)`` with the samples along dim 0 of ``S`` → ``(lead, r, K)``, contiguous (the
    GEMMs below read it transposed without a copy); a tangent shared by all samples
    (``(r, 1, …)``) → ``(1, r, K)``, which broadcasts in the products below."""
    r = T.shape[0]
    if lead > 1 and T.ndim > 1 and T.shape[1] == 1:
        return T.reshape(r, -1)[None].contiguous()
    return T.reshape(r, lead, -1).transpose(0, 1).contiguous()


def _as_batched_matrices(t: torch.Tensor) -> torch.Tensor:
    """``(…, i, k)`` → ``(nb, i, k)``: a matrix, or a batch of them, as a 3-D stack."""
    return t.reshape(-1, *t.shape[-2:])


def _matmul_half(tap: Tap, env, tan, adj, lead: int, n: int):
    """For ``Y = A @ B`` with both input-dependent: ``W[l,m,p,b,k,j] = Σ_i Ȳ[m,l,b,i,j]
    TA[p,l,b,i,k]`` and ``TB`` as ``(r, lead, b, k, j)``; the term is ``W·TB`` plus its
    transpose (``b`` are the matrices of one sample, ``l`` the samples)."""
    a, b = tap.inputs
    A, Bm = env[a], env[b]
    TA = tan[a].expand(n, *A.shape).reshape(n, -1, *A.shape[-2:])
    TB = tan[b].expand(n, *Bm.shape).reshape(n, -1, *Bm.shape[-2:])
    nb = TA.shape[1]
    TA = TA.reshape(n, lead, nb // lead, *A.shape[-2:])
    TB = TB.reshape(n, lead, nb // lead, *Bm.shape[-2:])
    m = adj.shape[0]
    Y = adj.reshape(m, lead, nb // lead, A.shape[-2], Bm.shape[-1])
    return torch.einsum("mlbij,plbik->lmpbkj", Y, TA), TB


def _generic_hvps(tap: Tap, env, tan, adj, r):
    """Per input: ``(m, r, *S_a)``, the op's Hessian (weighted by each adjoint) times each
    tangent direction, from reverse-over-reverse products of that op alone."""
    g = _op_fn(tap, env)
    us = [_detach(env[u]) for u in tap.inputs]
    Ts = [
        tan[u].expand(r, *us[k].shape) if tan.get(u) is not None
        else us[k].new_zeros(r, *us[k].shape)
        for k, u in enumerate(tap.inputs)
    ]  # fmt: skip
    argnums = tuple(range(len(us)))

    def per_output(w):
        phi = lambda *vals: (g(*vals) * w).sum()  # noqa: E731
        _, back = vjp(grad(phi, argnums=argnums), *us)
        return vmap(back)(tuple(Ts))

    with torch.enable_grad():
        return vmap(per_output)(adj), Ts


def _add(acc, term):
    return term if acc is None else acc.add_(term)


def _unary_term(G, c, need: str, acc):
    """``Σ_k c_k G_k G_kᵀ`` per sample and output, added to ``acc`` (or a new tensor).

    ``G``: ``(lead, n, K)`` per sample, or ``(1, n, K)`` shared; ``c``: ``(lead, m, K)``.
    Returns ``(lead, m, n, n)`` (``need="hessian"``) or ``(lead, m, n)`` diagonals.
    """
    lead, m, K = c.shape
    n = G.shape[1]
    if need != "hessian":
        if G.shape[0] == 1:
            D = (c.reshape(-1, K) @ (G[0] * G[0]).T).reshape(lead, m, n)
        else:
            D = torch.bmm(c, (G * G).mT)
        return _add(acc, D)
    Gc = G[:, None] * c[:, :, None, :]  # (lead, m, n, K), contiguous
    if G.shape[0] == 1:  # shared by the samples: one GEMM for the whole batch
        if acc is None:
            return (Gc.reshape(-1, K) @ G[0].T).reshape(lead, m, n, n)
        acc.view(-1, n).addmm_(Gc.reshape(-1, K), G[0].T)
        return acc
    if acc is None:
        return torch.bmm(Gc.reshape(lead, m * n, K), G.mT).reshape(lead, m, n, n)
    acc.view(lead, m * n, n).baddbmm_(Gc.reshape(lead, m * n, K), G.mT)
    return acc


def _product_term(Ga, Gb, c, need: str, acc):
    """``Σ_k c_k (Ga_k Gb_kᵀ + Gb_k Ga_kᵀ)`` per sample and output (shapes as above)."""
    lead, m, K = c.shape
    n = Ga.shape[1]
    if need != "hessian":
        return _add(acc, 2 * torch.bmm(c, (Ga * Gb).mT))
    M = torch.bmm((Ga[:, None] * c[:, :, None, :]).reshape(lead, m * n, K), Gb.mT)
    M = M.reshape(lead, m, n, n)
    if acc is None:
        return M + M.mT
    return acc.add_(M).add_(M.mT)


def terms(ex: Executor, env, tan, s2, adjoints, m: int, n: int, need: str, acc=None):
    """Each tap's term: ``(lead, m, n, n)`` Hessians or ``(lead, m, n)`` diagonals.

    Without ``acc``, yields one new tensor per tap (the per-node terms); with ``acc`` (a tensor
    of that shape, or the string ``"sum"`` to start one), adds every term into it in place and
    yields the sum once.
    """
    lead = ex.graph.rows
    summing = acc is not None
    total = None if acc == "sum" else acc
    for tap, adj in zip(ex.graph.taps, adjoints):
        if adj is None:
            continue
        value = env[tap.node]
        c = adj.reshape(m, lead, -1).transpose(0, 1)  # (lead, m, K)
        into = total if summing else None
        if tap.kind == "unary":
            G = _per_sample(tan[tap.inputs[0]], lead)  # (lead, n, K)
            term = _unary_term(G, c * s2[tap.op].reshape(lead, 1, -1), need, into)
        elif tap.kind == "product":
            a, b = tap.inputs
            shape = value.shape
            Ga = _per_sample(full(tan[a], shape), lead)
            Gb = Ga if a is b else _per_sample(full(tan[b], shape), lead)
            term = _product_term(Ga, Gb, c.contiguous(), need, into)
        elif tap.kind == "matmul":
            W, TB = _matmul_half(tap, env, tan, adj, lead, n)
            if need == "hessian":
                M = torch.einsum("lmpbkj,qlbkj->lmpq", W, TB)
                term = _add(into, M + M.mT)
            else:
                term = _add(into, 2 * torch.einsum("lmpbkj,plbkj->lmp", W, TB))
        else:
            HV, Ts = _generic_hvps(tap, env, tan, adj, n)
            term = into
            for T, hv in zip(Ts, HV):
                G = _per_sample(T, lead)  # (lead, n, K)
                H = hv.reshape(m, n, lead, -1).permute(2, 0, 1, 3)  # (lead, m, n, K)
                if need == "hessian":
                    part = (H.reshape(lead, m * n, -1) @ G.mT).reshape(lead, m, n, n)
                else:
                    part = (H * G[:, None]).sum(-1)
                term = _add(term, part) if summing else (part if term is None else term + part)
        if summing:
            total = term
        else:
            yield term
    if summing:
        yield total


def hvp_pullback(ex: Executor, env, tan, s2, adjoints, x, m: int):
    """``Σ_taps J_aᵀ w_a`` for every selected output: ``(m, *x.shape)``, the HVPs."""
    outs, weights = [], []
    for tap, adj in zip(ex.graph.taps, adjoints):
        if adj is None:
            continue
        value = env[tap.node]
        if tap.kind == "unary":
            (u,) = tap.inputs
            t = tan[u]  # (1, *S)
            w = adj * (s2[tap.op] * t[0])[None]
            outs.append(env[u])
            weights.append(w)
        elif tap.kind == "product":
            a, b = tap.inputs
            ta = full(tan[a], value.shape)[0]
            tb = full(tan[b], value.shape)[0]
            for u, t_other in ((a, tb), (b, ta)):
                w = adj * t_other[None]
                weights.append(_sum_to(w, env[u].shape))
                outs.append(env[u])
        elif tap.kind == "matmul":
            a, b = tap.inputs
            A, Bm = _as_batched_matrices(env[a]), _as_batched_matrices(env[b])
            tA = _as_batched_matrices(tan[a].expand(1, *env[a].shape)[0])
            tB = _as_batched_matrices(tan[b].expand(1, *env[b].shape)[0])
            Y = adj.reshape(adj.shape[0], *A.shape[:-1], Bm.shape[-1])  # (m, nb, i, j)
            for u, w in ((a, torch.einsum("mnij,nkj->mnik", Y, tB)),
                         (b, torch.einsum("mnij,nik->mnkj", Y, tA))):  # fmt: skip
                outs.append(env[u])
                weights.append(w.reshape(w.shape[0], *env[u].shape))
        else:
            HV, _ = _generic_hvps(tap, env, tan, adj, 1)
            for u, hv in zip(tap.inputs, HV):
                outs.append(env[u])
                weights.append(hv[:, 0])
    live = [(o, w) for o, w in zip(outs, weights) if o.requires_grad]
    if not live:
        return x.new_zeros(m, *x.shape)
    grads = torch.autograd.grad(
        [o for o, _ in live],
        x,
        [w for _, w in live],
        allow_unused=True,
        is_grads_batched=True,
    )[0]
    return x.new_zeros(m, *x.shape) if grads is None else grads


def _sum_to(w: torch.Tensor, shape) -> torch.Tensor:
    """Sum a ``(m, *S_out)`` weight over the dims that ``shape`` was broadcast along."""
    lead = w.ndim - 1 - len(shape)
    if lead > 0:
        w = w.sum(dim=tuple(range(1, 1 + lead)))
    dims = tuple(k + 1 for k, s in enumerate(shape) if s == 1 and w.shape[k + 1] != 1)
    return w.sum(dim=dims, keepdim=True) if dims else w


__all__ = ["Executor", "terms", "hvp_pullback"]
