"""How high the grid's GEMM share can go without fusing elementwise work into the GEMMs.

Run ``.venv/bin/python benchmarks/share_ceiling.py`` (under a minute). Writes
``<out>/share_ceiling.md``.

The grid's *GEMM share* (``gemm_share.py``) is ``t(replay) / t(call)``: the call's own matrix
products, replayed alone on contiguous operands, against the whole call. Its *ceiling*,
``t(replay) / t(bound)`` (:func:`gemm_share.bound`), is the share of a call that did nothing
but those products and one in-place pass over each product's smaller operand between them —
no Python, no dispatch, no second pass for ``σ''``, no sums of squares: less elementwise work
than any code that calls a BLAS can do. A target above the ceiling needs the elementwise work
done inside the GEMMs (epilogue fusion), which no BLAS call offers. The grid run
(``./dev bench --suite grid``) reports both; this script measures only them, in 25 s.

Calls, replays and passes are timed interleaved (``timing.interleaved``), one thread, on the
grid's large points (``run.GRID``, the models ``./dev bench`` times).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

TASKS = ("hessian", "diagonal", "laplacian", "hvp")


def measure(task: str, cfg) -> dict:
    """The grid's GEMM columns (:func:`run.gemm_share_of`, 9 rounds) for ``task`` at ``cfg``."""
    import run

    import hessviz as hv

    model, X, V = run.build_problem(cfg, "cpu")
    f = getattr(hv, run.HV_FUNCTIONS[task])
    args = (model, X, V) if task == "hvp" else (model, X)

    def call():
        return f(*args, batched=True)

    call()
    gemm = run.gemm_share_of(call, argparse.Namespace(device="cpu", rounds=9, budget=8), _nothing)
    return {"task": task, "point": cfg.label, **gemm}


def _nothing() -> None:
    """The CPU's sync: nothing to wait for."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--tasks", default=",".join(TASKS))
    a = ap.parse_args(argv)
    import run
    import sidebyside
    import timing
    import torch

    torch.set_num_threads(1)
    start, load = time.time(), sidebyside.loadavg()
    rows = []
    for cfg in (c for c in run.GRID if c.n >= run.GEMM_SHARE_MIN_N):
        for task in a.tasks.split(","):
            rows.append(measure(task, cfg))
            r = rows[-1]
            share, ceiling = r["gemm_share"], r["gemm_ceiling"]
            print(f"{task:10s} {r['point']:28s} share {share:.0%} ceiling {ceiling:.0%}")
    lines = [
        "# GEMM share and its one-pass ceiling (`benchmarks/share_ceiling.py`)",
        "",
        f"Machine: {timing.machine()}, shared with other users (load average "
        f"{load} at the start, {sidebyside.loadavg()} at the end); torch {torch.__version__}, "
        f"one thread; hessviz at {sidebyside.code_version()}; {time.strftime('%Y-%m-%d %H:%M %Z')}"
        f", {time.time() - start:.0f} s. Command: `.venv/bin/python benchmarks/share_ceiling.py`.",
        "",
        "*share*: the call's products replayed alone against the call (the grid's GEMM share). "
        "*ceiling*: the replay against the replay plus one in-place pass over each product's "
        "smaller operand (the least elementwise work between two products; see the module's "
        "docstring). Rates: the GEMM FLOPs over the call's and the replay's median time. Medians "
        "of interleaved rounds; ratios are medians of per-round ratios.",
        "",
        "| task | point | GEMM GFLOP | hessviz GFLOP/s | torch mm GFLOP/s | share | ceiling |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['task']} | {r['point']} | {r['gemm_gflop']:.3f} | {r['hv_gflops']:.1f} | "
        f"{r['mm_gflops']:.1f} | {r['gemm_share']:.0%} | {r['gemm_ceiling']:.0%} |"
        for r in rows
    ]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "share_ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
