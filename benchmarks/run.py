"""hessviz benchmark: every hessviz method and its peers, in one process, on one grid.

Run ``./dev bench`` (or ``.venv/bin/python benchmarks/run.py``); ``--help`` lists the options.
Writes ``<out>/<tag>.md``, ``<tag>.csv`` and ``<tag>.html`` (time vs n, log-log) and prints the
summary lines: the headline speedups of ``method="auto"`` with PASS/FAIL per target.

The grid: CPU (or ``--device cuda``), float64, tanh MLPs ``hv.mlp([n] + [width] * layers + [m])``,
batched inputs. Methods: ``"auto"`` and every entry of ``hv.METHODS`` that computes the task, plus
the peers in :mod:`peers` (torch.autograd.functional, torch.func, the seed threads' loop and, when
installed, JAX under ``jit``). Every result is checked against torch.func before it is timed.

``--suite graph|pinn|tiny`` runs ``graph_models.py``, ``pinn.py`` (PINN Laplacians vs folx, JAX,
torch.compile, jet) or ``tiny.py`` (tiny-model latency vs JAX jit, torch.compile) instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, astuple, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # this checkout's hessviz; the helper modules beside us
# numpy's OpenBLAS (the pinn suite's GEMM rates): one thread; read when torch loads numpy
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import peers  # noqa: E402
import report  # noqa: E402
import timing  # noqa: E402


@dataclass(frozen=True)
class Config:
    """One grid point: ``n`` inputs, hidden ``width``, ``m`` outputs, hidden ``layers``, batch."""

    n: int
    width: int
    m: int
    layers: int
    batch: int

    @property
    def label(self) -> str:
        return f"n={self.n} w={self.width} m={self.m} L={self.layers} B={self.batch}"


GRID = [
    Config(2, 16, 3, 2, 64),
    Config(10, 64, 3, 3, 64),
    Config(64, 128, 10, 3, 32),
    Config(256, 128, 10, 3, 8),
    Config(784, 256, 10, 2, 2),
]
QUICK_GRID = GRID[:3]
LATENCY_MODELS = [Config(2, 16, 1, 2, 1), Config(4, 32, 2, 2, 1), Config(8, 64, 3, 2, 1)]
"""Batch-1 small models (n ≤ 8, width ≤ 64): what the explorer computes on every change."""

HV_FUNCTIONS = {
    "hessian": "hessian",
    "diagonal": "hessian_diagonal",
    "laplacian": "laplacian",
    "hvp": "hvp",
}


@dataclass
class Entry:
    """One method on one grid point, ready to time."""

    label: str
    family: str  # "hessviz" or "peer"
    fn: Callable | None
    note: str = ""


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="./dev bench",
        description="Time every hessviz method and its peers (torch.func, autograd, the seed "
        "loop, JAX) on the benchmark grid; write a table, a CSV and a figure.",
    )
    ap.add_argument("--quick", action="store_true", help="small grid, few runs (< 1 minute)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch/XLA CPU threads (default 1)")
    ap.add_argument("--tasks", default=",".join(peers.TASKS), help="comma-separated subset")
    ap.add_argument("--out", default=str(HERE / "results"), help="output folder")
    ap.add_argument("--tag", default=None, help="file name stem (default: the device; quick-…)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per grid point")
    ap.add_argument("--budget", type=float, default=None, help="max seconds per method/point")
    ap.add_argument("--loop-limit", type=float, default=None, help="skip loops slower than this")
    ap.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure peak memory per row (default: on, off with --quick)",
    )
    ap.add_argument("--no-jax", action="store_true", help="leave JAX out even if installed")
    ap.add_argument(
        "--no-compiled", dest="compiled", action="store_false",
        help="leave hv.compile out (it compiles each task and point ahead of time, ~10 s each)",
    )  # fmt: skip
    ap.add_argument(
        "--suite",
        choices=("all", "grid", "graph", "pinn", "tiny"),
        default="all",
        help="grid: the tanh-MLP grid above; graph: user-style models through the graph engine "
        "(benchmarks/graph_models.py, CPU; results/graph.*); all (default): both; "
        "pinn: the PINN Laplacian grid vs folx, JAX, torch.compile, jet (benchmarks/pinn.py, "
        "about 15 min; results/pinn.*); tiny: tiny-model latency vs JAX jit and torch.compile "
        "(benchmarks/tiny.py, about 2 min; results/tiny.*)",
    )
    ap.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    # as given, for the graph suite (which has its own defaults)
    args.rounds_given, args.budget_given, args.tag_given = args.rounds, args.budget, args.tag
    args.tasks = [t for t in args.tasks.split(",") if t]
    unknown = set(args.tasks) - set(peers.TASKS)
    if unknown:
        ap.error(f"unknown task(s) {sorted(unknown)}; choose from {', '.join(peers.TASKS)}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        ap.error(f"--device must be cpu or cuda, got {args.device!r}")
    args.memory = (not args.quick) if args.memory is None else args.memory
    args.rounds = args.rounds or (7 if args.quick else 15)
    args.budget = args.budget or (0.5 if args.quick else 3.0)
    args.loop_limit = args.loop_limit or (0.5 if args.quick else 60.0)
    args.tag = args.tag or (f"quick-{args.device.split(':')[0]}" if args.quick else None)
    args.tag = args.tag or args.device.split(":")[0]
    return args


def setup(args):
    """Threads, JAX flags (before JAX is imported) and the device check."""
    peers.pin(args.threads)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: torch sees no CUDA device here.")
    jax_reason = "left out (--no-jax)" if args.no_jax else peers.jax_unavailable_reason()
    jdev = None
    if jax_reason is None:
        jdev = peers.jax_device_for(args.device)
        if jdev is None:
            jax_reason = f"JAX has no {args.device} backend here"
    return jdev, jax_reason


def build_problem(cfg: Config, device: str):
    import torch

    import hessviz as hv

    model = hv.mlp([cfg.n] + [cfg.width] * cfg.layers + [cfg.m], "tanh", seed=0).to(device)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(cfg.batch, cfg.n, generator=g, dtype=torch.float64).to(device)
    V = torch.randn(cfg.batch, cfg.n, generator=g, dtype=torch.float64).to(device)
    return model, X, V


def build_entries(task: str, cfg: Config, model, X, V, args, jdev, jax_reason) -> list[Entry]:
    """Every method for ``task`` at ``cfg``: hessviz's (auto first), then the peers."""
    import hessviz as hv

    fname = HV_FUNCTIONS[task]
    hv_fn = getattr(hv, fname)
    args_ = (model, X, V) if task == "hvp" else (model, X)

    def hv_call(method):
        return lambda: hv_fn(*args_, batched=True, method=method)

    def too_slow(entry: Entry, per_sample: bool) -> None:
        est = peers.loop_seconds_estimate(model, X, per_sample=per_sample)
        if est > args.loop_limit:
            entry.fn, entry.note = None, f"{entry.label} skipped: ~{est:.0f} s per call"

    entries = [Entry("hessviz auto", "hessviz", hv_call("auto"))]
    for name, meth in hv.METHODS.items():
        if task not in meth.computes:
            continue
        entry = Entry(f"hessviz {name}", "hessviz", hv_call(name))
        if name == "loop" and task != "hvp":
            too_slow(entry, per_sample=False)
        entries.append(entry)
    for label, builder, opts in peers.TORCH_PEERS[task]:
        entry = Entry(label, "peer", builder(model, X, V))
        if opts.get("loop"):
            too_slow(entry, per_sample=True)
        entries.append(entry)
    if args.compiled:
        entries.append(Entry(HV_COMPILED, "hessviz", hv_compiled(task, model, X, V)))
    if jax_reason is None:
        jax_fn = peers.jax_builders(jdev)[task](model, X, V)
        entries.append(Entry(peers.JAX_LABELS[task], "peer", jax_fn))
    return entries


HV_COMPILED = "hv.compile"


def hv_compiled(task: str, model, X, V):
    """``hv.compile(model, X, batched=True, ops=(task,))``'s call for ``task`` (compiled here,
    before timing; the handle keeps its compiled kernel only where it beats the plain one)."""
    import hessviz as hv

    handle = hv.compile(model, X, batched=True, ops=(task,))
    if handle.kernels[task].startswith("eager"):
        print(f"hv.compile: {task} {handle.kernels[task]}", file=sys.stderr)
    if task == "hvp":
        return lambda: handle.hvp(X, V)
    call = {"hessian": handle.hessian, "diagonal": handle.hessian_diagonal,
            "laplacian": handle.laplacian}[task]  # fmt: skip
    return lambda: call(X)


def _as_torch(result):
    import numpy as np
    import torch

    if isinstance(result, torch.Tensor):
        return result.detach().to("cpu", torch.float64)
    return torch.from_numpy(np.asarray(result)).to(torch.float64)


def _max_rel_error(result, reference) -> float:
    r = _as_torch(result)
    if r.shape != reference.shape:
        return float("inf")
    scale = float(reference.abs().max()) or 1.0
    return float((r - reference).abs().max()) / scale


def time_grid_point(task, cfg, args, jdev, jax_reason, sync) -> tuple[list[dict], str]:
    """Warm up, check and time every method for ``task`` at ``cfg``; one row per method."""
    import hessviz as hv

    model, X, V = build_problem(cfg, args.device)
    entries = build_entries(task, cfg, model, X, V, args, jdev, jax_reason)
    auto_choice = hv.auto_method(model, X, op=task, batched=True)
    ref_label = peers.REFERENCE[task]
    ref_entry = next(e for e in entries if e.label == ref_label)
    reference = _as_torch(ref_entry.fn())
    estimates, errors = {}, {}
    for e in entries:
        if e.fn is None:
            continue
        seconds, result = timing.warm_up(e.fn, sync, slow_s=0.5)
        errors[e.label] = _max_rel_error(result, reference)
        estimates[e.label] = seconds
    fns = {e.label: e.fn for e in entries if e.fn is not None}
    timings = timing.interleaved(
        fns,
        estimates,
        sync,
        rounds=args.rounds,
        min_sample_s=0.005 if args.quick else 0.02,
        budget_s=args.budget,
    )
    ref = timings[ref_label]
    auto = next(e for e in entries if e.label == "hessviz auto")
    gemm = gemm_share_of(auto.fn, args, sync, jdev) if cfg.n >= GEMM_SHARE_MIN_N else {}
    rows = []
    for e in entries:
        t = timings.get(e.label)
        err = errors.get(e.label)
        note = e.note
        if err is not None and err > 1e-8:
            note = (note + "; " if note else "") + f"MISMATCH: rel. error {err:.1e}"
        rows.append(
            {
                "device": args.device,
                "threads": args.threads,
                "task": task,
                **asdict(cfg),
                "method": e.label + (f" ({auto_choice})" if e.label == "hessviz auto" else ""),
                "family": e.family,
                **timing.columns(t),
                "speedup_vs_ref": None if t is None else timing.speedup(ref, t),
                "max_rel_err": err,
                "peak_mib": None,
                **{k: (gemm.get(k) if e is auto else None) for k in GEMM_COLUMNS},
                "note": note,
                "_samples": [] if t is None else t.samples,  # seconds per round (not in CSV)
            }
        )
    return rows, auto_choice


GEMM_SHARE_MIN_N = 64
GEMM_COLUMNS = (
    "gemm_gflop",
    "gemm_share",
    "gemm_ceiling",
    "hv_gflops",
    "mm_gflops",
    "np_gflops",
    "xla_gflops",
)


def gemm_share_of(fn, args, sync, jdev=None) -> dict:
    """The GEMM share of one call (``gemm_share.py``): its matrix products replayed alone on
    contiguous operands, timed interleaved with the call; ``gemm_share`` = t(replay) / t(call),
    ``gemm_ceiling`` = t(replay) / t(bound) (the replay with one pass between products:
    :func:`gemm_share.bound`),
    ``hv_gflops`` and ``mm_gflops`` the GEMM FLOPs over the call's and the replay's time,
    ``np_gflops`` the same products' rate in ``np.matmul``, and with JAX device ``jdev``,
    ``xla_gflops`` their rate under XLA.
    CPU only (a CUDA call's products are not timed apart)."""
    import gemm_share

    if not args.device.startswith("cpu"):
        return {}
    gemms = gemm_share.record(fn)
    if not gemms:
        return {}
    fns = {
        "call": fn,
        "replay": gemm_share.replay(gemms),
        "bound": gemm_share.bound(gemms),
        "numpy": gemm_share.replay_numpy(gemms),
    }
    if jdev is not None:
        fns["xla"] = gemm_share.replay_xla(gemms, jdev)
    estimates = {k: timing.warm_up(f, sync, slow_s=0.5)[0] for k, f in fns.items()}
    t = timing.interleaved(
        fns, estimates, sync, rounds=args.rounds, min_sample_s=0.02, budget_s=args.budget
    )
    flops = gemm_share.flops(gemms)
    return {
        "gemm_gflop": flops / 1e9,
        "gemm_share": timing.speedup(t["replay"], t["call"]),
        "gemm_ceiling": timing.speedup(t["replay"], t["bound"]),
        "hv_gflops": flops / t["call"].median_s / 1e9,
        "mm_gflops": flops / t["replay"].median_s / 1e9,
        "np_gflops": flops / t["numpy"].median_s / 1e9,
        "xla_gflops": flops / t["xla"].median_s / 1e9 if "xla" in t else None,
    }


def _latency_calls(model, x) -> dict[str, Callable]:
    from torch.func import hessian

    import hessviz as hv

    calls = {
        "hv.hessian": lambda: hv.hessian(model, x),
        "hv.hessian_diagonal": lambda: hv.hessian_diagonal(model, x),
        "hv.fd_hessian": lambda: hv.fd_hessian(model, x),
    }
    return {
        **calls,
        "all three": lambda: [f() for f in calls.values()],
        "torch.func hessian": lambda: hessian(model)(x),
    }


def time_latency(args, sync) -> list[dict]:
    """Batch-1 small models: full Hessian, diagonal, FD Hessian, and all three in a row."""
    from torch.func import hessian

    import hessviz as hv

    rows = []
    for cfg in LATENCY_MODELS:
        model, X, _ = build_problem(cfg, args.device)
        x = X[0]
        fns = _latency_calls(model, x)
        est = {k: timing.warm_up(f, sync, slow_s=0.5)[0] for k, f in fns.items()}
        ts = timing.interleaved(
            fns, est, sync, rounds=args.rounds * 2, min_sample_s=0.002, budget_s=args.budget
        )
        ref = hessian(model)(x).detach()
        err = float((hv.hessian(model, x) - ref).abs().max() / ref.abs().max().clamp_min(1e-300))
        for k, t in ts.items():
            rows.append(
                {
                    "model": cfg.label.replace(f" B={cfg.batch}", " B=1"),
                    "call": k,
                    "median_ms": t.median_s * 1e3,
                    "q1_ms": t.q1_s * 1e3,
                    "q3_ms": t.q3_s * 1e3,
                    "runs": t.runs,
                    "max_rel_err": err if k == "hv.hessian" else None,
                }
            )
    return rows


# --------------------------------------------------------------------------------------------
# Peak memory: one child process per grid point (see timing.py for what it measures)
# --------------------------------------------------------------------------------------------


def memory_worker(args) -> None:
    """Child process: print one JSON line ``{task, method, peak_bytes}`` per timed method."""
    job = json.loads(args.memory_worker)
    cfg = Config(**job["config"])
    args.loop_limit = float("inf")  # the parent already decided which methods run
    jdev, jax_reason = setup(args)
    sync = timing.synchronizer(args.device)
    for task, labels in job["methods"].items():
        model, X, V = build_problem(cfg, args.device)
        for e in build_entries(task, cfg, model, X, V, args, jdev, jax_reason):
            if e.label not in labels:
                continue
            if labels[e.label] < 2000:  # ms; a slow loop has nothing to compile or cache
                timing.warm_up(e.fn, sync, slow_s=0.5)
            peak = timing.peak_bytes(e.fn, args.device)
            print(json.dumps({"task": task, "method": e.label, "peak_bytes": peak}), flush=True)


def measure_memory(cfg: Config, rows: list[dict], args) -> None:
    """Fill ``peak_mib`` of this grid point's timed rows, from a child process."""
    if not args.device.startswith("cuda") and not timing.rss_supported():
        return
    mine = [
        r for r in rows if (r["n"], r["width"], r["m"], r["layers"], r["batch"]) == astuple(cfg)
    ]
    methods: dict[str, dict[str, float]] = {}  # task → {timed method: its median ms}
    for r in mine:
        if r["median_ms"] is not None:
            methods.setdefault(r["task"], {})[r["method"].split(" (")[0]] = r["median_ms"]
    job = json.dumps({"config": asdict(cfg), "methods": methods})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", job]
    cmd += ["--device", args.device, "--threads", str(args.threads)]
    cmd += ["--no-jax"] if args.no_jax else []
    env = {**os.environ, **timing.MALLOC_ENV}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.stderr.write(f"\nmemory pass failed for {cfg.label}:\n{proc.stderr[-2000:]}\n")
    peaks = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            peaks[(d["task"], d["method"])] = d["peak_bytes"]
    for r in mine:
        key = (r["task"], r["method"].split(" (")[0])
        if key in peaks:
            r["peak_mib"] = peaks[key] / 2**20


# --------------------------------------------------------------------------------------------


def _gemm_summary(device: str) -> str:
    """Which library ran hessviz's CPU products (:func:`hessviz._gemm.summary`)."""
    from hessviz import _gemm

    return _gemm.summary() if device == "cpu" else "the device's own (torch)"


def environment(args, jax_reason) -> dict:
    import torch

    env = {
        "device": args.device,
        "machine": timing.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "jax": None,
        "jax_note": jax_reason,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": "./dev bench " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "rounds": args.rounds,
        "gemm": _gemm_summary(args.device),
    }
    if args.device.startswith("cuda"):
        env["machine"] = torch.cuda.get_device_name() + f" (host: {env['machine']})"
    if jax_reason is None:
        import jax

        env["jax"] = jax.__version__
    return env


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_worker:
        memory_worker(args)
        return 0
    if args.suite in ("all", "grid"):
        run_grid(args)
    if args.suite in ("all", "graph"):
        run_graph_suite(args)
    if args.suite in ("pinn", "tiny"):
        run_side_by_side_suite(args)
    return 0


def run_side_by_side_suite(args) -> None:
    """benchmarks/pinn.py or tiny.py with this run's options (CPU, one thread, their own
    grids: --tasks, --device, --threads and --memory do not apply)."""
    import pinn
    import tiny

    suite = {"pinn": pinn, "tiny": tiny}[args.suite]
    if not args.device.startswith("cpu") or args.threads != 1:
        print(f"{args.suite} suite skipped: it runs on CPU with one thread only.")
        return
    argv = ["--quick"] if args.quick else []
    argv += ["--rounds", str(args.rounds_given)] if args.rounds_given else []
    argv += ["--budget", str(args.budget_given)] if args.budget_given else []
    argv += ["--tag", args.tag_given] if args.tag_given else []
    argv += ["--out", args.out] if Path(args.out).resolve() != HERE / "results" else []
    suite.main(argv, command=" ".join(["./dev bench", *sys.argv[1:]]))


def run_graph_suite(args) -> None:
    """benchmarks/graph_models.py with this run's options (CPU only; hessian and diagonal)."""
    import graph_models

    ops = [t for t in args.tasks if t in graph_models.OPS]
    if not args.device.startswith("cpu") or not ops:
        why = "it runs on CPU only" if ops else "--tasks names neither hessian nor diagonal"
        print(f"graph-models suite (benchmarks/graph_models.py) skipped: {why}.")
        return
    argv = ["--quick"] if args.quick else []
    argv += ["--threads", str(args.threads)] if args.threads != 1 else []
    argv += ["--ops", ",".join(ops)] if len(ops) < len(graph_models.OPS) else []
    argv += ["--rounds", str(args.rounds_given)] if args.rounds_given else []
    argv += ["--budget", str(args.budget_given)] if args.budget_given else []
    argv += ["--tag", f"{args.tag_given}-graph"] if args.tag_given else []
    argv += ["--out", args.out] if Path(args.out).resolve() != HERE / "results" else []
    if args.suite == "all":
        print()
    graph_models.main(argv, command=" ".join(["./dev bench", *sys.argv[1:]]))


def run_grid(args) -> None:
    """The tanh-MLP grid: every method and peer, every task; results/<tag>.md, .csv, .html."""
    jdev, jax_reason = setup(args)
    sync = timing.synchronizer(args.device)
    grid = QUICK_GRID if args.quick else GRID
    steps = len(grid) * len(args.tasks) + 1 + (len(grid) if args.memory else 0)
    bar = timing.Progress(steps)
    rows, choices = [], {}
    for cfg in grid:
        for task in args.tasks:
            bar.update(f"{task:9s} {cfg.label}")
            point_rows, choices[(task, cfg.label)] = time_grid_point(
                task, cfg, args, jdev, jax_reason, sync
            )
            rows += point_rows
            bar.update(f"{task:9s} {cfg.label}", step=1)
    bar.update("latency, batch 1")
    latency = time_latency(args, sync)
    bar.update("latency, batch 1", step=1)
    if args.memory:
        for cfg in grid:
            bar.update(f"peak memory {cfg.label}")
            measure_memory(cfg, rows, args)
            bar.update(f"peak memory {cfg.label}", step=1)
    bar.close()
    env = environment(args, jax_reason)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = report.summary_lines(rows, latency, env)
    report.write_csv(out / f"{args.tag}.csv", rows)
    report.write_markdown(
        out / f"{args.tag}.md", rows, latency, env, summary, [asdict(c) for c in grid]
    )
    figure_note = report.write_figure(out / f"{args.tag}.html", rows, env)
    print("\n".join(summary))
    print(f"results: {out / args.tag}.md, .csv, .html{figure_note}")


if __name__ == "__main__":
    sys.exit(main())
