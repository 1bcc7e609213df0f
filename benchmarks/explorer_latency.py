"""Median update latency of the explorer per control change (target: ≤ 100 ms).

Each control is set the way a user sets it (``app.controls[name].value = v``), alternating between
two values so that every change is a real one; the time is the synchronous callback: engine
calls, figure specs and the in-place FigureWidget updates (messages built, no browser attached).
The method race is excluded by design (it is a button that takes seconds).

Run:  .venv/bin/python benchmarks/explorer_latency.py [--repeats 15] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# Run from a checkout without relying on how hessviz was installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hessviz.widgets import ExplorerState, HessianExplorer  # noqa: E402

TARGET_MS = 100.0

#: Problem sizes: the target covers n ≤ 8, widths ≤ 64 and ≤ 4 hidden layers.
CONFIGS = {
    "small  n=2, 8×8, m=2": ExplorerState(n=2, m=2, layers=(8, 8), x=(0.3, -1.0)),
    "medium n=4, 32×3, m=2": ExplorerState(n=4, m=2, layers=(32, 32, 32), x=(0.3, -1.0, 0.5, 0.0)),
    "large  n=8, 64×4, m=4": ExplorerState(
        n=8, m=4, layers=(64, 64, 64, 64), x=(0.3, -1.0, 0.5, 0.0, 1.0, -0.5, 0.2, 0.8)
    ),
}


def changes(state: ExplorerState) -> dict[str, tuple[str, object, object]]:
    """Row label → (control, value A, value B); the benchmark alternates A, B, A, …"""
    last = len(state.layers) - 1
    rows = {
        "point x0": ("x0", 0.5, -0.5),
        "output": ("out", 1, 0),
        "FD step": ("step", 1e-3, 1e-5),
        "Hutchinson samples": ("samples", 128, 64),
        "seed": ("seed", 1, 0),
        "precision": ("dtype", "float32", "float64"),
        "method auto↔structured": ("method", "structured", "auto"),
        "method auto↔loop": ("method", "loop", "auto"),
        "activation": ("act", "sigmoid", "tanh"),
        "width (last layer)": (f"width{last}", state.layers[last] - 1, state.layers[last]),
        "hidden layers ±1": ("layers", len(state.layers) - 1, len(state.layers)),
        "input dimension ±1": ("n", state.n - 1, state.n),
    }
    if state.n > 2:
        rows["landscape plane"] = ("plane_b", 2, 1)
    return rows


def measure(state: ExplorerState, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per change, per row."""
    app = HessianExplorer(state)
    _ = app.widget  # displayed once, as in a notebook
    timings: dict[str, list[float]] = {}
    for label, (control, a, b) in changes(state).items():
        widget = app.controls[control]
        samples = []
        for i in range(repeats + 1):
            value = a if i % 2 == 0 else b
            start = time.perf_counter()
            widget.value = value
            elapsed = 1e3 * (time.perf_counter() - start)
            if app.last_error:
                raise RuntimeError(f"{label}: {app.last_error}")
            if i:  # the first change warms caches up (first call of a method, new shapes)
                samples.append(elapsed)
        widget.value = b
        timings[label] = samples
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="changes per row (default 15)")
    parser.add_argument("--quick", action="store_true", help="5 repeats, large config only")
    args = parser.parse_args()
    configs = CONFIGS
    repeats = args.repeats
    if args.quick:
        configs = {k: v for k, v in CONFIGS.items() if k.startswith("large")}
        repeats = 5
    print(
        f"hessviz explorer update latency: median (p90) ms per control change, "
        f"{repeats} changes each; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}); the explorer computes "
        f"with 1 torch thread. Target: median ≤ {TARGET_MS:.0f} ms (method race excluded)."
    )
    all_medians = []
    for name, state in configs.items():
        timings = measure(state, repeats)
        print(f"\n{name}")
        print(f"  {'control change':26s} {'median':>8s} {'p90':>8s}")
        for label, samples in timings.items():
            median = statistics.median(samples)
            p90 = sorted(samples)[int(0.9 * (len(samples) - 1))]
            flag = "" if median <= TARGET_MS else "  ← over target"
            print(f"  {label:26s} {median:8.1f} {p90:8.1f}{flag}")
            all_medians.append(median)
        overall = statistics.median([t for s in timings.values() for t in s])
        print(f"  {'all changes':26s} {overall:8.1f}")
    worst = max(all_medians)
    verdict = "meets" if worst <= TARGET_MS else "misses"
    print(
        f"\nworst median {worst:.1f} ms: {verdict} the {TARGET_MS:.0f} ms target "
        f"(load average now {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
