"""Per-call overhead of a plain call on a model already seen: the call minus its kernel.

Run ``.venv/bin/python benchmarks/overhead.py`` (about 20 s; one core, one torch thread).

For each op on the tiny model of ``benchmarks/tiny.py`` (``hv.mlp([2, 16, 16, 3])``, batch 64,
float64 and float32) it times, interleaved, the public call (``hv.hessian(model, X,
batched=True)``, …) and the kernel that call runs — the plan's runner left in
:mod:`hessviz._hot` by the first call, called as the call calls it, under ``torch.no_grad()``.
The difference is what a repeated call adds above the arithmetic: the request key and cache
look-up, the module-tree and finiteness checks, shaping the result. Target: at most 20 µs.
Medians of 15 rounds of 200 calls each; single runs on a shared machine move by a few µs.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

import hessviz as hv  # noqa: E402
from hessviz import _hot  # noqa: E402

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


def measure(op: str, dtype: torch.dtype, rounds: int = 15) -> tuple[float, float]:
    """``(call, kernel)`` median seconds per call."""
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
            entry.kernel(p, *args)

    times = {"call": [], "kernel": []}
    for _ in range(rounds):
        for name, fn in (("call", call), ("kernel", kernel)):
            times[name].append(_per_call(fn))
    return statistics.median(times["call"]), statistics.median(times["kernel"])


def main() -> int:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    print("Plain-call overhead above the kernel — hv.mlp([2, 16, 16, 3]), batch 64, 1 thread")
    worst = 0.0
    for dtype in (torch.float64, torch.float32):
        for op in CALLS:
            t_call, t_kernel = measure(op, dtype)
            extra = (t_call - t_kernel) * 1e6
            worst = max(worst, extra)
            print(
                f"  {str(dtype).removeprefix('torch.'):8s} {op:9s} call {t_call * 1e6:6.1f} µs"
                f"  kernel {t_kernel * 1e6:6.1f} µs  overhead {extra:5.1f} µs"
            )
    verdict = "PASS" if worst <= TARGET_US else "FAIL"
    print(f"  worst overhead {worst:.1f} µs (target <= {TARGET_US:.0f} µs)  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
