"""How fast misuse is refused, and what the explorer's size guards cost (time and memory).

These numbers used to be assertions in the tests (a second per misuse, 5 s and 150 MB for the
largest explorer view, 30 MB over a long session); on a shared, noisy machine they are measured
here and printed instead. The tests keep checking the behaviour (the refusal, its message, the
refused sizes, the widget count).

Run:  .venv/bin/python benchmarks/misuse_latency.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

# Run from a checkout without relying on how hessviz was installed; the catalogues live in tests/.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import psutil  # noqa: E402
import torch  # noqa: E402

import hessviz as hv  # noqa: E402


def misuse(repeats: int) -> None:
    from test_errors import CATALOGUE

    times = []
    for name, call, expected in CATALOGUE:
        if not isinstance(expected, str):
            continue
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            try:
                call()
            except hv.HessvizError:
                pass
            best = min(best, time.perf_counter() - start)
        times.append((best, name))
    times.sort(reverse=True)
    median_ms = statistics.median(t for t, _ in times) * 1e3
    print(f"misuse refused: {len(times)} cases, median {median_ms:.2f} ms")
    for seconds, name in times[:5]:
        print(f"  slowest  {name:32s} {seconds * 1e3:8.2f} ms")


def explorer() -> None:
    from test_explorer_walk import HUGE_QUERY, LARGEST, METHODS, control_step

    from hessviz.widgets import HessianExplorer

    process = psutil.Process()
    print("explorer, largest allowed view (set_state):")
    for dtype in ("float64", "float32"):
        for method in METHODS:
            app = HessianExplorer()
            rss = process.memory_info().rss
            start = time.perf_counter()
            ok = app.set_state(LARGEST.replace(method=method, dtype=dtype))
            seconds = time.perf_counter() - start
            grown = (process.memory_info().rss - rss) / 2**20
            print(f"  {method:10s} {dtype}: {seconds:6.3f} s, RSS +{grown:5.1f} MB, ok={ok}")
    rss = process.memory_info().rss
    start = time.perf_counter()
    HessianExplorer.from_query(HUGE_QUERY)
    print(
        f"explorer, query asking for huge sizes: {time.perf_counter() - start:.3f} s, "
        f"RSS +{(process.memory_info().rss - rss) / 2**20:.1f} MB"
    )
    app, rng, rss = HessianExplorer(), random.Random(11), []
    for i in range(300):
        if i % 3 == 0:
            app.apply_query(f"n={rng.randint(-5, 99)}&act=<b>{i}</b>&layers={rng.randint(0, 99)}")
        else:
            control_step(app, rng).action()
        if i in (99, 299):
            rss.append(process.memory_info().rss / 2**20)
    print(f"explorer, long session: RSS +{rss[1] - rss[0]:.1f} MB between changes 100 and 300")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of N per misuse")
    args = parser.parse_args()
    torch.set_num_threads(1)
    misuse(args.repeats)
    explorer()


if __name__ == "__main__":
    main()
