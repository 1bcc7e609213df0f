"""The peers hessviz is measured against, written the way their users write them.

Every builder takes the benchmark problem — a ``model`` mapping ``(B, n) → (B, m)``, a batch ``X``
of shape ``(B, n)`` and one direction per sample ``V`` — and returns a zero-argument callable
whose result has hessviz's batched layout: Hessians ``(B, m, n, n)``, diagonals and HVPs
``(B, m, n)``, Laplacians ``(B, m)``. The benchmark checks every result against torch.func.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch.func import hessian, jacrev, jvp, vmap

TASKS = ("hessian", "diagonal", "laplacian", "hvp")


def _sample_fn(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(n,) → (m,)``: one sample through a model that expects a batch."""
    return lambda x: model(x.unsqueeze(0)).squeeze(0)


# --------------------------------------------------------------------------------------------
# The seed threads' code: apaszke's gist, ``hessian(y, x) = jacobian(jacobian(y, x), x)``, one
# backward call per output element — applied to one sample at a time, as the threads do.
# --------------------------------------------------------------------------------------------


def _gist_jacobian(y, x, create_graph=False):
    jac = []
    flat_y = y.reshape(-1)
    grad_y = torch.zeros_like(flat_y)
    for i in range(len(flat_y)):
        grad_y[i] = 1.0
        (grad_x,) = torch.autograd.grad(
            flat_y, x, grad_y, retain_graph=True, create_graph=create_graph
        )
        jac.append(grad_x.reshape(x.shape))
        grad_y[i] = 0.0
    return torch.stack(jac).reshape(y.shape + x.shape)


def seed_loop_hessian(model, X, V=None):
    """The forum threads' loop: per sample, ``m`` backward calls, then ``m·n`` double-backwards."""

    def run():
        out = []
        for xb in X:
            x = xb.detach().requires_grad_(True)
            y = model(x.unsqueeze(0)).squeeze(0)
            out.append(_gist_jacobian(_gist_jacobian(y, x, create_graph=True), x))
        return torch.stack(out).detach()

    return run


def loop_seconds_estimate(model, X, *, per_sample: bool) -> float:
    """Seconds one loop Hessian would take: a few double-backwards timed, times their count.

    ``per_sample``: the seed threads' loop (``B·m·n`` calls on single samples); else hessviz's
    ``"loop"`` method (``m·n`` calls on the batch-summed output).
    """
    import time

    sync = torch.cuda.synchronize if X.is_cuda else (lambda: None)
    x = (X[:1] if per_sample else X).detach().requires_grad_(True)
    y = model(x)
    (g,) = torch.autograd.grad(y[:, 0].sum(), x, create_graph=True)
    k = min(4, x.shape[1])
    sync()
    start = time.perf_counter()
    for j in range(k):
        torch.autograd.grad(g[:, j].sum(), x, retain_graph=True)
    sync()
    per_call = (time.perf_counter() - start) / k
    calls = y.shape[1] * X.shape[1] * (X.shape[0] if per_sample else 1)
    return per_call * calls


# --------------------------------------------------------------------------------------------
# torch.autograd.functional and torch.func
# --------------------------------------------------------------------------------------------


def autograd_functional_hessian(model, X, V=None):
    """``torch.autograd.functional.hessian(vectorize=True)`` per sample and per output."""
    from torch.autograd.functional import hessian as af_hessian

    f = _sample_fn(model)

    def run():
        m = f(X[0]).shape[0]
        return torch.stack(
            [
                torch.stack(
                    [af_hessian(lambda x, i=i: f(x)[i], xb, vectorize=True) for i in range(m)]
                )
                for xb in X
            ]
        )

    return run


def func_hessian(model, X, V=None):
    """``vmap(torch.func.hessian(f))``: jacfwd∘jacrev per sample, vectorised over the batch."""
    f = _sample_fn(model)
    return lambda: vmap(hessian(f))(X)


def _func_second_directional(model, X):
    f = _sample_fn(model)
    E = torch.eye(X.shape[1], dtype=X.dtype, device=X.device)

    def second(x, e):
        return jvp(lambda y: jvp(f, (y,), (e,))[1], (x,), (e,))[1]  # ∂²f/∂e² : (m,)

    inner = vmap(second, in_dims=(None, 0))  # over the basis
    return lambda: vmap(inner, in_dims=(0, None))(X, E).transpose(1, 2)  # (B, m, n)


def func_jvp_jvp_diagonal(model, X, V=None):
    """torch.func jvp∘jvp along every basis vector, vmapped over the basis and the batch."""
    return _func_second_directional(model, X)


def func_full_then_diagonal(model, X, V=None):
    full = func_hessian(model, X)
    return lambda: torch.diagonal(full(), dim1=-2, dim2=-1)


def func_jvp_jvp_laplacian(model, X, V=None):
    diag = _func_second_directional(model, X)
    return lambda: diag().sum(-1)


def func_full_then_trace(model, X, V=None):
    full = func_hessian(model, X)
    return lambda: torch.diagonal(full(), dim1=-2, dim2=-1).sum(-1)


def func_hvp(model, X, V):
    """HVPs as ``jvp(jacrev(f))`` (forward-over-reverse), vmapped over the batch."""
    f = _sample_fn(model)
    return lambda: vmap(lambda x, v: jvp(jacrev(f), (x,), (v,))[1])(X, V)


# --------------------------------------------------------------------------------------------
# JAX under jit (optional: pip install "hessviz[jax]")
# --------------------------------------------------------------------------------------------


def jax_unavailable_reason() -> str | None:
    """None when JAX can be imported, else a one-line reason."""
    try:
        import jax  # noqa: F401
    except Exception as err:  # ImportError, or a broken jaxlib
        return f"JAX not importable ({type(err).__name__}); pip install 'hessviz[jax]'"
    return None


def configure_jax(threads: int) -> None:
    """Float64 and XLA's Eigen pool off (for one thread); call before importing JAX.

    XLA's CPU client starts worker threads whatever its flags say: unpinned, a JAX call used 1.9
    cores of this 2-core machine. :func:`pin` is what keeps it to one.
    """
    if threads == 1 and "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
    os.environ.setdefault("JAX_ENABLE_X64", "1")


def pin(threads: int) -> None:
    """Run the whole process — torch, XLA and their helper threads — on the first ``threads``
    of its allowed cores, and set torch's thread count to match (results headers name the
    cores: :func:`timing.machine`).

    Every library then computes on the same cores: "1 thread each" would not hold otherwise
    (XLA's float64 GEMM ran at 110 GFLOP/s on two cores, 56 on one). ``sched_setaffinity(0)``
    moves only the calling thread, so the threads already running (a BLAS pool started when
    its library was imported) are moved one by one.
    """
    import torch

    configure_jax(threads)
    torch.set_num_threads(threads)
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(allowed) > threads:
        cores = set(allowed[:threads])
        os.sched_setaffinity(0, cores)  # this thread, and every thread started from now on
        for tid in _threads():  # and the ones already running (pools started at import)
            try:
                os.sched_setaffinity(tid, cores)
            except OSError:  # exited meanwhile
                pass


def _threads() -> list[int]:
    """The ids of this process's threads (Linux: ``/proc/self/task``; elsewhere none)."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


def jax_device_for(device: str):
    """The JAX device matching the torch device, or None if JAX has no such backend."""
    import jax

    platform = "gpu" if device.startswith("cuda") else "cpu"
    try:
        return jax.devices(platform)[0]
    except RuntimeError:
        return None


def _jax_mlp(model: torch.nn.Sequential, jdev):
    """The same network in JAX: identical float64 weights, tanh between the Linear layers."""
    import jax
    import jax.numpy as jnp

    layers = []
    for mod in model:
        if isinstance(mod, torch.nn.Linear):
            W = jax.device_put(mod.weight.detach().cpu().numpy(), jdev)
            b = jax.device_put(mod.bias.detach().cpu().numpy(), jdev)
            layers.append(("linear", W, b))
        elif isinstance(mod, torch.nn.Tanh):
            layers.append(("tanh", None, None))
        else:
            raise NotImplementedError(f"JAX peer: layer {type(mod).__name__}")

    def f(x):  # (n,) -> (m,)
        for kind, W, b in layers:
            x = W @ x + b if kind == "linear" else jnp.tanh(x)
        return x

    return f


def _jax_arrays(X, V, jdev):
    import jax

    Xj = jax.device_put(X.detach().cpu().numpy(), jdev)
    Vj = jax.device_put(V.detach().cpu().numpy(), jdev)
    return Xj, Vj


def _jax_call(fn, *args):
    """A torch-returning callable that waits for the device (``block_until_ready``)."""

    def run():
        return fn(*args).block_until_ready()

    return run


def jax_builders(jdev) -> dict[str, Callable]:
    """task → builder(model, X, V) for the JAX peers under ``jax.jit``."""
    import jax
    import jax.numpy as jnp

    def second_directional(f):
        def second(x, e):
            return jax.jvp(lambda y: jax.jvp(f, (y,), (e,))[1], (x,), (e,))[1]

        return jax.vmap(jax.vmap(second, in_axes=(None, 0)), in_axes=(0, None))  # (B, n, m)

    def hessian_b(model, X, V):
        f = _jax_mlp(model, jdev)
        Xj, _ = _jax_arrays(X, V, jdev)
        return _jax_call(jax.jit(jax.vmap(jax.hessian(f))), Xj)

    def diagonal_b(model, X, V):
        f = _jax_mlp(model, jdev)
        Xj, _ = _jax_arrays(X, V, jdev)
        E = jax.device_put(jnp.eye(X.shape[1], dtype=jnp.float64), jdev)
        fn = jax.jit(lambda X, E: jnp.swapaxes(second_directional(f)(X, E), 1, 2))
        return _jax_call(fn, Xj, E)

    def laplacian_b(model, X, V):
        f = _jax_mlp(model, jdev)
        Xj, _ = _jax_arrays(X, V, jdev)
        E = jax.device_put(jnp.eye(X.shape[1], dtype=jnp.float64), jdev)
        fn = jax.jit(lambda X, E: second_directional(f)(X, E).sum(1))
        return _jax_call(fn, Xj, E)

    def hvp_b(model, X, V):
        f = _jax_mlp(model, jdev)
        Xj, Vj = _jax_arrays(X, V, jdev)
        fn = jax.jit(jax.vmap(lambda x, v: jax.jvp(jax.jacrev(f), (x,), (v,))[1]))
        return _jax_call(fn, Xj, Vj)

    return {
        "hessian": hessian_b,
        "diagonal": diagonal_b,
        "laplacian": laplacian_b,
        "hvp": hvp_b,
    }


# --------------------------------------------------------------------------------------------
# The registry of peers: task → [(label, builder, options)]
# --------------------------------------------------------------------------------------------

REFERENCE = {
    "hessian": "torch.func hessian",
    "diagonal": "torch.func jvp∘jvp",
    "laplacian": "torch.func jvp∘jvp",
    "hvp": "torch.func jvp(jacrev)",
}
"""The torch.func peer every ratio is taken against, per task."""

TORCH_PEERS: dict[str, list[tuple[str, Callable, dict]]] = {
    "hessian": [
        ("torch.func hessian", func_hessian, {}),
        ("autograd.functional.hessian", autograd_functional_hessian, {}),
        ("seed loop", seed_loop_hessian, {"loop": True}),
    ],
    "diagonal": [
        ("torch.func jvp∘jvp", func_jvp_jvp_diagonal, {}),
        ("torch.func full→diag", func_full_then_diagonal, {}),
    ],
    "laplacian": [
        ("torch.func jvp∘jvp", func_jvp_jvp_laplacian, {}),
        ("torch.func full→trace", func_full_then_trace, {}),
    ],
    "hvp": [
        ("torch.func jvp(jacrev)", func_hvp, {}),
    ],
}

JAX_LABELS = {
    "hessian": "JAX jit hessian",
    "diagonal": "JAX jit jvp∘jvp",
    "laplacian": "JAX jit jvp∘jvp",
    "hvp": "JAX jit jvp(jacrev)",
}
