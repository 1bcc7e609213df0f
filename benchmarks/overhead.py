"""Per-call overhead of a plain call on a model already seen: what it adds above the arithmetic.

Run ``.venv/bin/python benchmarks/overhead.py`` (about 30 s; one core, one torch thread).

For each op on the tiny model of ``benchmarks/tiny.py`` (``hv.mlp([2, 16, 16, 3])``, batch 64,
float64 and float32) the public call (``hv.hessian(model, X, batched=True)``, …) is timed twice:

- **overhead** (the target): the call with its arithmetic replaced by the result it computed —
  the sweep of the numpy plan or of the PyTorch chain kernel that the first call left in
  :mod:`hessviz._hot` returns that result without computing it. What is left is everything a
  repeated call does above the arithmetic: the request key and cache look-up, the module-tree
  and finiteness checks, switching autograd off and on, the kernel's own checks of the weights
  and inputs, its buffers' lock and the numpy views, shaping the result. Target: at most 20 µs.
- **call − kernel** (a cross-check of the front end): the call and its kernel (the plan's
  runner, called as the call calls it, under ``torch.no_grad()``), interleaved, and their
  difference: the call's work outside the runner only (the runner's own checks, lock and views
  are in the kernel's time here). On a shared machine the kernels' 100–600 µs move by more
  than that between rounds, so this column is noisy.

Each figure is per call, from 15 rounds of 200 calls: the overhead's best round judges the
target (the machine's own interruptions only ever add time: ``timeit``'s reasoning), its median
round is shown beside it; the cross-check uses medians.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from contextlib import contextmanager  # noqa: E402
from unittest import mock  # noqa: E402

import torch  # noqa: E402

import hessviz as hv  # noqa: E402
from hessviz import _hot  # noqa: E402
from hessviz.structured import chain, chain_numpy  # noqa: E402
from hessviz.structured.kernels import ChainRunner  # noqa: E402

TARGET_US = 20.0
CALLS = {
    "hessian": lambda m, X, V: hv.hessian(m, X, batched=True),
    "diagonal": lambda m, X, V: hv.hessian_diagonal(m, X, batched=True),
    "laplacian": lambda m, X, V: hv.laplacian(m, X, batched=True),
    "hvp": lambda m, X, V: hv.hvp(m, X, V, batched=True),
}


def _per_call(fn, calls: int = 200) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


@contextmanager
def _arithmetic_saved(kernel, result: torch.Tensor):
    """Inside, ``kernel`` (an entry's runner) does all it does except the arithmetic, which
    returns ``result``: a numpy plan's sweep (``plan._run``: the plan's lock, the numpy views
    of the inputs and the result's tensor stay), or the PyTorch chain sweep (``chain.run``)."""
    if isinstance(kernel, chain_numpy.NumpyRunner):
        array = result.numpy()
        with mock.patch.object(kernel.plan, "_run", lambda *args: array):
            yield
    else:
        with mock.patch.object(chain, "run", lambda *args, **kwargs: result):
            yield


def measure(op: str, dtype: torch.dtype, rounds: int = 15) -> tuple:
    """Seconds per call: the overhead's best and median round, the call's and the kernel's
    median round; and the kernel's kind (numpy or torch)."""
    model = hv.mlp([2, 16, 16, 3], "tanh", seed=0, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, 2, dtype=dtype, generator=gen)
    V = torch.randn(64, 2, dtype=dtype, generator=gen)
    call = lambda: CALLS[op](model, X, V)  # noqa: E731
    call()
    entry = _hot.find(model, _hot.request_key(op, "auto", X, True, None))
    if entry is None:
        raise SystemExit(f"{op}: the first call left no plan")
    p = entry.problem
    args = (X, p.sel) if op != "hvp" else (X, V, p.sel)

    def kernel():
        with torch.no_grad():
            return entry.kernel(p, *args)

    if not isinstance(entry.kernel, ChainRunner):
        raise SystemExit(f"{op}: the plan's kernel is a {type(entry.kernel).__name__}, not a chain")
    numpy = isinstance(entry.kernel, chain_numpy.NumpyRunner) and entry.kernel._takes(*args)
    kind = "numpy" if numpy else "torch"  # (a NumpyRunner may hand the call to PyTorch's)
    result = kernel()
    times = {"overhead": [], "call": [], "kernel": []}
    for _ in range(rounds):
        with _arithmetic_saved(entry.kernel, result):
            times["overhead"].append(_per_call(call))
        for name, fn in (("call", call), ("kernel", kernel)):
            times[name].append(_per_call(fn))
    medians = [statistics.median(times[name]) for name in ("overhead", "call", "kernel")]
    return (min(times["overhead"]), *medians, kind)


def main() -> int:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    print("Plain-call overhead above the arithmetic — hv.mlp([2, 16, 16, 3]), batch 64, 1 thread")
    worst = 0.0
    for dtype in (torch.float64, torch.float32):
        for op in CALLS:
            t_best, t_over, t_call, t_kernel, kind = measure(op, dtype)
            worst = max(worst, t_best * 1e6)
            print(
                f"  {str(dtype).removeprefix('torch.'):8s} {op:9s} ({kind} kernel)"
                f"  overhead {t_best * 1e6:5.1f} µs (median round {t_over * 1e6:5.1f})"
                f"  | call {t_call * 1e6:6.1f} µs  kernel {t_kernel * 1e6:6.1f} µs"
                f"  call − kernel {(t_call - t_kernel) * 1e6:6.1f} µs"
            )
    verdict = "PASS" if worst <= TARGET_US else "FAIL"
    print(f"  worst overhead {worst:.1f} µs (target <= {TARGET_US:.0f} µs)  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
