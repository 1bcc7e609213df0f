"""Shared by ``pinn.py`` and ``tiny.py``: hessviz and its peers side by side, in one process.

The protocol, per problem (one model, one batch):

1. ``one_thread()`` first: the process pinned to one core, torch on one thread (the machine is
   shared; one core gives steady numbers and the same footing to every library — XLA starts
   worker threads whatever its flags say, and unpinned it used two cores).
2. Every method is a :class:`Method`: a ``build`` step (``jax.jit`` + ``.lower().compile()``,
   ``torch.compile`` and its compiling first call, jet's graph capture — whatever must happen
   once per shape), then a zero-argument callable. The build's seconds (``build_s``) and the
   first call's (``first_call_s``) are reported apart (wall time); neither is part of a timed
   sample. The first call is the warm-up, and its time sizes the samples. Every method is
   built before any makes its first call: the torch.compile peer's build resets Dynamo's
   caches (:func:`compiled`), which dropped ``hv.compile``'s ``torch.compile`` kernel too; its
   next call compiled again (2 s at a PINN point, d = 100) and, built first, that call was the
   one timed sample of a slow point: ``hv.compile`` read 0.2-0.5x the plain call's speed.
3. hessviz runs first; its result is the reference. Every peer's result is compared with it
   (max |peer − hessviz| / max |hessviz|) before the peer is timed: at most 1e-8 in float64,
   1e-4 in float32. A peer above that is flagged ``MISMATCH`` (it is still timed).
4. All methods are timed in the same interleaved rounds (:func:`timing.interleaved`: the
   order rotates, one untimed call before each sample of a fast method). The reported ratio of
   a peer is **peer time / hessviz time**, the median of the per-round ratios
   (:func:`timing.speedup`): > 1 means hessviz is faster. Samples are **CPU time of the
   process** (``time.process_time``, all threads: torch's and XLA's one compute thread each),
   which on an idle core equals wall time and on this shared 2-core machine leaves out the
   time spent waiting for a core — wall-time samples swung 2x between rounds here under
   load 3-4 (XLA GEMM: wall 47-82 ms, CPU 44-51 ms for the same call).

Peers live here only where both suites use them: the JAX twin of a tanh ``nn.Sequential`` and
torch.func's second-order functions (as functions of ``X``, so ``torch.compile`` can take them).
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # this checkout's hessviz; the helper modules beside us
# numpy's OpenBLAS (in the GEMM-rate block) reads this when numpy loads, and torch loads numpy:
# one thread, like torch and XLA (its default here is 2, and it doubles its rate).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import peers  # noqa: E402
import timing  # noqa: E402
import torch  # noqa: E402
from torch.func import hessian, jacrev, jvp, vmap  # noqa: E402

from hessviz import _gemm  # noqa: E402

TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-4}
"""Max relative difference from hessviz's result that a peer may have, per dtype."""

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def one_thread() -> None:
    """The whole process on one core, one torch thread, x64 JAX (before JAX is imported)."""
    peers.pin(1)


def missing(module: str) -> str | None:
    """None when ``module`` imports, else a one-line reason (the row is skipped with it)."""
    try:
        __import__(module)
    except Exception as err:  # ImportError, or a broken install
        return f"{module} not importable ({type(err).__name__}); see benchmarks/README.md"
    return None


def version(module: str) -> str | None:
    try:
        from importlib.metadata import version as dist_version

        return dist_version({"jet": "jet-for-pytorch"}.get(module, module))
    except Exception:
        return None


# --------------------------------------------------------------------------------------------
# Methods, checking and timing
# --------------------------------------------------------------------------------------------


@dataclass
class Method:
    """One way of computing the problem's result.

    ``build()`` returns the zero-argument callable (the result: a torch tensor or a JAX array,
    in hessviz's layout). ``skip`` (a reason) leaves the method out of this problem.
    ``check=False`` marks a yardstick (e.g. bare GEMMs) whose result is not the answer.
    """

    label: str
    build: Callable[[], Callable[[], object]] | None
    skip: str = ""
    check: bool = True


def as_torch(result) -> torch.Tensor:
    """A torch / JAX / numpy result as a float64 CPU tensor."""
    import numpy as np

    if isinstance(result, torch.Tensor):
        return result.detach().to("cpu", torch.float64)
    return torch.from_numpy(np.array(result, dtype=np.float64))  # a writable copy


def max_rel_error(result, reference: torch.Tensor) -> float:
    """max |result − reference| / max |reference|; inf when the shapes differ."""
    r = as_torch(result)
    if r.shape != reference.shape:
        return float("inf")
    scale = float(reference.abs().max()) or 1.0
    return float((r - reference).abs().max()) / scale


def measure(
    methods: list[Method],
    dtype: torch.dtype,
    *,
    rounds: int,
    budget_s: float,
    min_sample_s: float,
) -> list[dict]:
    """Build, check and time ``methods`` (hessviz first: the reference); one dict per method.

    Keys: ``method``, ``median_ms``, ``q1_ms``, ``q3_ms``, ``runs``, ``calls_per_run``,
    ``build_s``, ``first_call_s``, ``ratio`` (this method's time / hessviz's, median of
    per-round ratios), ``max_rel_err``, ``note``. Skipped methods have ``None`` times.
    """
    sync = timing.synchronizer("cpu")
    fns, build, first, errors, estimates, notes = {}, {}, {}, {}, {}, {}
    reference = None
    built = []
    for m in methods:  # every build before any first call: see the module's protocol, 2
        if m.skip:
            notes[m.label] = m.skip
            continue
        start = time.perf_counter()
        built.append((m, m.build()))
        build[m.label] = time.perf_counter() - start
    for m, fn in built:
        start = time.perf_counter()
        result = fn()
        first[m.label] = time.perf_counter() - start
        if reference is None:
            reference = as_torch(result)
        elif m.check:
            errors[m.label] = max_rel_error(result, reference)
            if errors[m.label] > TOLERANCE[dtype]:
                notes[m.label] = f"MISMATCH: rel. error {errors[m.label]:.1e}"
        del result
        estimates[m.label], fns[m.label] = first[m.label], fn
    timings = timing.interleaved(
        fns, estimates, sync, rounds=rounds, min_sample_s=min_sample_s, budget_s=budget_s,
        clock=time.process_time,
    )  # fmt: skip
    ref = timings[methods[0].label]
    rows = []
    for m in methods:
        t = timings.get(m.label)
        rows.append(
            {
                "method": m.label,
                **timing.columns(t),
                "build_s": build.get(m.label),
                "first_call_s": first.get(m.label),
                "ratio": None if t is None else timing.speedup(t, ref),
                "max_rel_err": errors.get(m.label),
                "note": notes.get(m.label, ""),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# torch.func, as functions of the batch (so torch.compile can take them)
# --------------------------------------------------------------------------------------------


def sample_fn(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(n,) → (m,)``: one sample through a model that expects a batch."""
    return lambda x: model(x.unsqueeze(0)).squeeze(0)


def func_second_directional(model: torch.nn.Module, n: int, dtype: torch.dtype) -> Callable:
    """``X (B, n) → (B, m, n)``: ∂²f/∂e_j² by jvp∘jvp along every basis vector e_j,
    vmapped over the basis and the batch (the torch.func way to a diagonal / Laplacian)."""
    f = sample_fn(model)
    E = torch.eye(n, dtype=dtype)

    def second(x, e):
        return jvp(lambda y: jvp(f, (y,), (e,))[1], (x,), (e,))[1]  # (m,)

    over_basis = vmap(second, in_dims=(None, 0))  # (n, m)
    return lambda X: vmap(over_basis, in_dims=(0, None))(X, E).transpose(1, 2)


def func_ops(model: torch.nn.Module, n: int, dtype: torch.dtype) -> dict[str, Callable]:
    """task → torch.func function of the batch, in hessviz's batched layout:
    ``hessian: X → (B, m, n, n)`` (vmap of jacfwd∘jacrev), ``diagonal: X → (B, m, n)`` and
    ``laplacian: X → (B, m)`` (jvp∘jvp), ``hvp: (X, V) → (B, m, n)`` (vmap of jvp∘jacrev)."""
    f = sample_fn(model)
    second = func_second_directional(model, n, dtype)
    return {
        "hessian": lambda X: vmap(hessian(f))(X),
        "diagonal": second,
        "laplacian": lambda X: second(X).sum(-1),
        "hvp": lambda X, V: vmap(lambda x, v: jvp(jacrev(f), (x,), (v,))[1])(X, V),
    }


def trainable_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model with ``requires_grad=True`` parameters, for ``torch.compile``'d peers.

    The suites freeze the model (hessviz's results carry no parameter gradients, so no
    method should record autograd graphs). torch.compile is the exception: with frozen
    parameters its jvp∘jvp code ran up to 1.7x slower here, and crashed (SIGSEGV) when a
    ``vmap(hessian)`` had been compiled earlier in the process: Inductor wrote into an efficient
    ZeroTensor, the class of bug of pytorch/pytorch#197067. Trainable parameters avoid both.
    """
    import copy

    return copy.deepcopy(model).requires_grad_(True)


def compiled(fn: Callable, *args) -> Callable[[], Callable[[], object]]:
    """A :class:`Method` build step: ``torch.compile(fn)`` bound to ``args``, compiled by one
    call. Dynamo's caches are reset first, so each problem compiles afresh and no recompile
    limit is reached across a grid. Give it a :func:`trainable_copy`'s function."""

    def build():
        torch._dynamo.reset()
        cfn = torch.compile(fn)
        cfn(*args)  # compiles
        return lambda: cfn(*args)

    return build


# --------------------------------------------------------------------------------------------
# JAX: the same network, jit-compiled ahead of the first call
# --------------------------------------------------------------------------------------------


def jax_mlp(model: torch.nn.Sequential) -> Callable:
    """``x (n,) → (m,)``: the tanh ``nn.Sequential`` in JAX, same weights and dtype, CPU."""
    import jax

    return peers._jax_mlp(model, jax.devices("cpu")[0])


def jax_second_directional(f: Callable, n: int, dtype) -> Callable:
    """``X (B, n) → (B, n, m)``: jvp∘jvp along every basis vector, vmapped over basis, batch."""
    import jax
    import jax.numpy as jnp

    E = jnp.eye(n, dtype=dtype)

    def second(x, e):
        return jax.jvp(lambda y: jax.jvp(f, (y,), (e,))[1], (x,), (e,))[1]

    return lambda X: jax.vmap(jax.vmap(second, in_axes=(None, 0)), in_axes=(0, None))(X, E)


def jax_jitted(fn: Callable, *arrays) -> Callable[[], Callable[[], object]]:
    """A :class:`Method` build step: ``jax.jit(fn)`` compiled for ``arrays`` (torch tensors,
    converted once), returning a callable that waits for the result."""

    def build():
        import jax

        args = [jax.device_put(a.detach().numpy()) for a in arrays]
        exe = jax.jit(fn).lower(*args).compile()
        return lambda: exe(*args).block_until_ready()

    return build


# --------------------------------------------------------------------------------------------
# Reporting helpers
# --------------------------------------------------------------------------------------------


def geo_mean(xs) -> float:
    xs = [x for x in xs if x and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def fmt_x(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "–"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.1f} ms"
    return f"{ms * 1e3:.0f} µs"


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def code_version() -> str:
    """The commit measured, and whether hessviz/ had uncommitted changes."""

    def git(*a):
        proc = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "hessviz")
    return head + (" with uncommitted changes in hessviz/" if dirty else "")


def environment(command: str) -> dict:
    """Machine, versions, date, load: the summary block of a results file."""
    return {
        "machine": timing.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "jax": version("jax") if missing("jax") is None else None,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": command,
        "code": code_version(),
        "load_start": loadavg(),
        "gemm": _gemm.summary(),
    }


def environment_line(env: dict, extra: str = "") -> str:
    """One markdown line: machine, versions, threads, date, load."""
    jax = f"JAX {env['jax']} (XLA, 1 thread)" if env.get("jax") else "JAX absent"
    return (
        f"Machine: {env['machine']}; shared with other users (load average "
        f"{env['load_start']} at the start, {env.get('load_end', '?')} at the end). "
        f"Python {env['python']}, torch {env['torch']} (1 thread), {jax}{extra}; "
        f"hessviz at {env['code']}, its matrix products: {env.get('gemm', '?')}; {env['date']}. "
        f"Command: `{env['command']}`."
    )


def write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    fields = list(rows[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
