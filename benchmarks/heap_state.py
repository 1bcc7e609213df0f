"""Plain PINN Laplacians in a fresh, torch-only process: what the plan workspaces are for.

Run ``.venv/bin/python benchmarks/heap_state.py`` (about a minute). Writes
``<out>/heap_state.md``.

PyTorch's CPU allocator hands every tensor to ``malloc`` and back. glibc serves large blocks with
fresh pages and returns freed memory at the top of its heap to the system, so a kernel's
temporaries are new pages on every call, and each first touch of a 4 KiB page is a page fault.
glibc raises those thresholds after the process frees a large block (up to 32 MiB): in the
side-by-side suites (``pinn.py``, ``tiny.py``) XLA's large frees had done so before hessviz ran,
so the faults never showed there — but a PINN training script that only ever ran torch pays
them. Each point here runs in its own child process, pinned to one core, torch only:

- *cold*: nothing ran before (glibc's defaults);
- *warm*: a 30 MiB tensor was allocated and freed first (what the side-by-side process had).

and times ``hv.laplacian(model, X, batched=True)`` (median of 9 rounds of repeated calls) with
the plan's workspace (:class:`hessviz._memory.Workspace`, what every call runs) and without it
(the chain kernel handed fresh buffers, as before the workspace existed). Single runs on a shared
machine: the same row moved by about ±10% between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import timing  # noqa: E402

POINTS = [  # (dtype, d, width, hidden layers, batch)
    ("float64", 2, 64, 4, 1024),
    ("float64", 2, 64, 4, 4096),
    ("float64", 10, 64, 6, 1024),
    ("float32", 2, 64, 4, 1024),
    ("float64", 3, 256, 4, 1024),
]

_CHILD = r"""
import json, os, statistics, sys, time
core, heap, dtype, d, w, L, B = sys.argv[1:8]
os.sched_setaffinity(0, {int(core)})
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[8])
import hessviz as hv
from hessviz.structured import kernels, chain

if heap == "warm":  # a large block freed: glibc raises its mmap and trim thresholds
    del_me = torch.ones(30 * 2**20 // 8, dtype=torch.float64)
    del del_me

d, w, L, B = int(d), int(w), int(L), int(B)
dt = getattr(torch, dtype)
model = hv.mlp([d] + [w] * L + [1], activation="tanh", seed=0, dtype=dt).requires_grad_(False)
X = torch.randn(B, d, generator=torch.Generator().manual_seed(1), dtype=dt)
call = lambda: hv.laplacian(model, X, batched=True)

def median_ms():
    call(); call()
    est = time.perf_counter(); call(); est = time.perf_counter() - est
    reps = max(1, int(0.05 / est))
    samples = []
    for _ in range(9):
        t = time.perf_counter()
        for _ in range(reps):
            call()
        samples.append((time.perf_counter() - t) / reps * 1e3)
    return statistics.median(samples)

with_ws = median_ms()
def fresh(self, p, X, *args):  # the chain kernel (same chunks) with fresh buffers
    return chain.run(self.op, self.chain, X, *args)
kernels.ChainRunner.__call__ = fresh
without = median_ms()
print(json.dumps({"with": with_ws, "without": without}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    allowed = sorted(os.sched_getaffinity(0))
    core = allowed[0]
    rows = []
    for point in POINTS:
        for heap in ("cold", "warm"):
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, str(core), heap, *map(str, point), str(HERE.parent)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            t = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((point, heap, t["with"], t["without"]))
            print(
                f"{point} {heap}: {t['with']:.2f} ms with the workspace, {t['without']:.2f} without"
            )
    lines = [
        "# Plain PINN Laplacians in a fresh, torch-only process",
        "",
        f"- Machine: {timing.machine()}; each point in its own child process pinned to core "
        f"{core}, torch 1 thread.",
        "- Command: `.venv/bin/python benchmarks/heap_state.py` (protocol in its docstring).",
        "",
        "| dtype | d | w | L | B | heap | with workspace | without | without / with |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for (dtype, d, w, L, B), heap, a, b in rows:
        lines.append(
            f"| {dtype} | {d} | {w} | {L} | {B} | {heap} | {a:.2f} ms | {b:.2f} ms | {b / a:.2f}x |"
        )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "heap_state.md").write_text("\n".join(lines) + "\n")
    print(f"results: {Path(args.out) / 'heap_state.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
