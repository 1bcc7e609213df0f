"""Timing, peak memory and a progress bar for the benchmark (no third-party dependencies).

Timing: every method of one grid point is warmed up, then timed in interleaved rounds (the order
rotates each round, so drift on a shared machine hits every method alike; each sample starts with
one untimed call); the reported time is the median over rounds, and a speedup is the median of
per-round ratios. A fast method is called several times per round so that one timed sample
lasts at least ``min_sample_s``.

Peak memory on CPU: the growth of the process's resident set during one call made after the
warm-up, ``VmHWM − VmRSS`` from ``/proc/self/status`` after resetting the high-water mark
(``/proc/self/clear_refs``). It runs in a child process started with glibc's mmap threshold
pinned (``MALLOC_MMAP_THRESHOLD_``) and free heap pages trimmed before each call, so buffers
that earlier calls freed are not reused silently. It counts everything the call touches — the
result, every temporary, BLAS and XLA buffers — at page (4 KiB) resolution. On CUDA: growth of
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Timing:
    median_s: float
    q1_s: float
    q3_s: float
    runs: int
    calls_per_run: int
    samples: list[float] = field(default_factory=list, repr=False)


def columns(t: Timing | None) -> dict:
    """The columns every results file writes for one timing (all None: not timed)."""
    if t is None:
        return dict.fromkeys(("median_ms", "q1_ms", "q3_ms", "runs", "calls_per_run"))
    return {"median_ms": t.median_s * 1e3, "q1_ms": t.q1_s * 1e3, "q3_ms": t.q3_s * 1e3,
            "runs": t.runs, "calls_per_run": t.calls_per_run}  # fmt: skip


def machine() -> str:
    """``"<CPU model>, <n> logical CPUs"`` for a results file's header, and the cores the
    process is pinned to (:func:`peers.pin`)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    line = f"{cpu}, {os.cpu_count()} logical CPUs"
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) < (os.cpu_count() or 0):
        cores = sorted(os.sched_getaffinity(0))
        line += f", the process pinned to core(s) {cores} (every library in it alike)"
    return line


def synchronizer(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def _timed(
    fn: Callable,
    calls: int,
    sync: Callable[[], None],
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, object]:
    sync()
    start = clock()
    for _ in range(calls):
        result = fn()
    sync()
    return (clock() - start) / calls, result


def warm_up(fn: Callable, sync: Callable[[], None], slow_s: float) -> tuple[float, object]:
    """Call up to three times (once if the first call is slow); return the fastest call's
    seconds (the estimate that sizes the timed samples) and the last result."""
    seconds, result = _timed(fn, 1, sync)
    if seconds > slow_s:
        return seconds, result
    for _ in range(2):
        s, result = _timed(fn, 1, sync)
        seconds = min(seconds, s)
    return seconds, result


def interleaved(
    fns: dict[str, Callable],
    estimates: dict[str, float],
    sync: Callable[[], None],
    *,
    rounds: int,
    min_sample_s: float,
    budget_s: float,
    rewarm_below_s: float = 0.1,
    on_round: Callable[[int, int], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time every callable in rotating order; ``budget_s`` caps one method's total time.

    Each sample is preceded by one untimed call (for methods faster than ``rewarm_below_s``), so
    a sample measures steady-state calls, not the first call after another method evicted caches
    and freed memory: otherwise a method's time would depend on how many calls share a sample.
    ``clock``: wall time by default; ``time.process_time`` (CPU time of the whole process, all
    threads) leaves out the time the process waits for a core on a shared machine.
    """
    names = list(fns)
    calls = {k: max(1, int(min_sample_s / max(estimates[k], 1e-7))) for k in names}
    runs = {
        k: max(1, min(rounds, int(budget_s / max(estimates[k] * calls[k], 1e-9)))) for k in names
    }
    samples: dict[str, list[float]] = {k: [] for k in names}
    total = max(runs.values())
    for r in range(total):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            if r < runs[k]:
                if estimates[k] < rewarm_below_s:
                    fns[k]()  # untimed: caches and pages warm again after the other methods
                samples[k].append(_timed(fns[k], calls[k], sync, clock)[0])
        if on_round:
            on_round(r + 1, total)
    out = {}
    for k, s in samples.items():
        q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0], s[0], s[0]]
        out[k] = Timing(statistics.median(s), q[0], q[2], len(s), calls[k], s)
    return out


def speedup(reference: Timing, other: Timing) -> float:
    """How many times faster ``other`` is than ``reference``.

    With at least three rounds in common, the median of the per-round ratios: the two samples
    of a round were taken moments apart, so load drift on a shared machine cancels. Otherwise
    the ratio of the medians.
    """
    pairs = list(zip(reference.samples, other.samples))
    if len(pairs) >= 3:
        return statistics.median(a / b for a, b in pairs)
    return reference.median_s / other.median_s


# --------------------------------------------------------------------------------------------
# Peak memory of one call
# --------------------------------------------------------------------------------------------

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def _proc_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def rss_supported() -> bool:
    try:
        _proc_kib("VmHWM")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _release_free_heap() -> None:
    """Give free heap pages back to the system (glibc ``malloc_trim``), so that a call reusing
    chunks an earlier method freed shows up in the resident set again."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def peak_bytes(fn: Callable, device: str) -> int:
    """Peak memory growth of one call of ``fn`` (already warmed up), in bytes."""
    gc.collect()
    _release_free_heap()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del out
        return peak
    before = _proc_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    out = fn()
    peak = _proc_kib("VmHWM") - before
    del out
    return max(0, peak) * 1024


# --------------------------------------------------------------------------------------------
# Progress on stderr
# --------------------------------------------------------------------------------------------


class Progress:
    """``[#####.....]  12/40  0:41  hessian n=64 …`` on one stderr line (plain text if piped)."""

    def __init__(self, total: int, width: int = 28):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, label: str, step: int = 0) -> None:
        self.done += step
        frac = min(1.0, self.done / self.total)
        filled = int(frac * self.width)
        secs = int(time.perf_counter() - self.start)
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done:>3}/{self.total} "
            f"{secs // 60}:{secs % 60:02d}  {label}"
        )
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:150])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
        sys.stderr.flush()
