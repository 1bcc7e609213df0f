"""The PINN Laplacian grid: ``hv.laplacian`` against the peers a PINN user would pick instead.

Run ``./dev bench --suite pinn`` (or ``.venv/bin/python benchmarks/pinn.py``; ``--help`` lists the
options; ``--quick`` runs 4 points in about a minute; ``--points d=100,w=256`` re-runs a subset).
Writes ``<out>/pinn.md`` and ``pinn.csv`` (``quick-pinn.*`` with ``--quick``).

The problem: scalar tanh MLPs ``u: R^d → R``, ``hv.mlp([d] + [width] * layers + [1], "tanh")``
with frozen parameters (``torch.compile`` gets a trainable copy: ``sidebyside.trainable_copy``),
a batch ``X`` of shape ``(B, d)``, the Laplacian ``Δu(x_b)`` of every sample:
``hv.laplacian(model, X, batched=True)``, shape ``(B, 1)``. The grid: d ∈ {2, 3, 10,
100}, width ∈ {64, 256}, hidden layers ∈ {4, 6}, B ∈ {1024, 4096}, float64 and float32.

The peers (each skipped with a note when its package is absent), all ``(B, 1)``:

- ``folx``: ``jax.jit(jax.vmap(lambda x: folx.forward_laplacian(u)(x).laplacian))``, the way
  folx's users batch it (folx's default: dense, no sparsity);
- ``JAX jvp∘jvp``: ``jax.jit`` of ``Σ_j ∂²u/∂e_j²`` by jvp∘jvp, vmapped over the basis and the
  batch (forward-over-forward);
- ``torch.func``: the same jvp∘jvp, ``torch.func.vmap`` over basis and batch, eager;
- ``compiled``: ``torch.compile`` of that torch.func function (its first call — the compile —
  is reported apart; the ratio is of steady-state calls);
- ``jet``: jet-for-pytorch's collapsed Taylor-mode Laplacian, as its authors benchmark it
  (``jet.laplacian(u, (x0,), collapsed=True)``, ``capture_graph``, common-subexpression
  elimination, ``torch.func.vmap`` over the batch). jet needs Python ≥ 3.12, so its rows run
  in a second process (``.venv-jet``, see benchmarks/README.md) that times hessviz again side by
  side with jet: every ratio is still taken within one process. That process runs while this
  one works through the grid (one core each; samples are CPU time, see ``sidebyside.py``).

hessviz is timed twice: plain ``hv.laplacian`` (the reference of every ratio) and the opt-in
handle ``hv.compile(model, X, batched=True, ops=("laplacian",))``, whose kernel is compiled ahead
of time and kept only where it beats the plain one (its compile is its build step, reported
apart). The targets of issue 13 are judged on both; the issue accepts an opt-in handle.

Ratios are peer time / hessviz time (> 1: hessviz is faster), the median of per-round ratios
(protocol: ``sidebyside.py``).

**GEMM yardstick.** A forward Laplacian carries, per sample, the value, the ``d`` Jacobian
columns and the Laplacian of every hidden layer through the next weight matrix, so the
algorithm hessviz uses for this model needs at least these GEMM FLOPs (L hidden layers of width
w, batch B; the first layer's Jacobian is its weight matrix and its Laplacian is zero; of the
output layer only the Laplacian is needed)::

    FLOPs = 2·B·d·w  +  (L − 1)·2·(d + 2)·B·w²  +  2·B·w

The yardstick runs exactly those ``torch.mm`` calls (same shapes, dtype, thread, process) and
nothing else; *GEMM/hv* is its time over hessviz's (1.0 would mean hessviz spends all its time
in GEMMs at torch's GEMM rate), and *GFLOP/s* is the formula's count over hessviz's time.

**Cost control.** The torch.func, compiled and JAX jvp∘jvp peers (not folx, not jet) are
skipped where their time, predicted from the last point with the same dtype and d scaled by the
FLOP count, exceeds ``--peer-limit`` seconds per call; the note says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's hessviz; the helpers beside us

import sidebyside as sbs  # noqa: E402
import timing  # noqa: E402
import torch  # noqa: E402
from sidebyside import Method  # noqa: E402

JET_PYTHON = HERE.parent / ".venv-jet" / "bin" / "python"
TARGET_FOLX, FLOOR_FOLX, TARGET_JET = 1.0, 0.7, 1.5
FOLX_DIMS = (2, 3, 10)  # the folx target's geo-mean is over these input dimensions
HV, GEMM, HVC = "hessviz", "GEMM yardstick", "hv.compile"
FOLX, JAXJJ, FUNC, COMPILED, JET = "folx", "JAX jvp∘jvp", "torch.func", "compiled", "jet"
LIMITED = (JAXJJ, FUNC, COMPILED)
"""Peers skipped where their predicted time per call exceeds --peer-limit."""


@dataclass(frozen=True)
class Point:
    """One grid point: ``u = hv.mlp([d] + [width] * layers + [1])`` in ``dtype``, batch ``B``."""

    dtype: str
    d: int
    width: int
    layers: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.dtype} d={self.d} w={self.width} L={self.layers} B={self.batch}"

    @property
    def flops(self) -> int:
        """GEMM FLOPs of a forward Laplacian (module docstring)."""
        d, w, L, B = self.d, self.width, self.layers, self.batch
        return 2 * B * d * w + (L - 1) * 2 * (d + 2) * B * w * w + 2 * B * w


GRID = [
    Point(dt, d, w, L, B)
    for dt in ("float64", "float32")
    for d in (2, 3, 10, 100)
    for w in (64, 256)
    for L in (4, 6)
    for B in (1024, 4096)
]
QUICK = [
    Point("float64", 2, 64, 4, 1024),
    Point("float32", 3, 64, 4, 1024),
    Point("float64", 10, 256, 4, 1024),
    Point("float32", 100, 64, 6, 1024),
]
KEYS = {"dtype": "dtype", "d": "d", "w": "width", "L": "layers", "B": "batch"}


def select(points: list[Point], filters: list[str]) -> list[Point]:
    """Points matching any filter; a filter is ``key=value`` pairs joined by commas, keys
    ``dtype, d, w, L, B`` (``d=100,w=256,dtype=float64``)."""
    if not filters:
        return points
    chosen = []
    for p in points:
        for flt in filters:
            pairs = dict(kv.split("=", 1) for kv in flt.split(",") if kv)
            if all(str(getattr(p, KEYS[k])) == v for k, v in pairs.items()):
                chosen.append(p)
                break
    return chosen


def problem(p: Point, models: dict) -> tuple[torch.nn.Sequential, torch.Tensor]:
    """The frozen model (one per dtype, d, w, L: both batches share it) and ``X (B, d)``."""
    import hessviz as hv

    key = (p.dtype, p.d, p.width, p.layers)
    if key not in models:
        models.clear()  # one model alive at a time
        sizes = [p.d] + [p.width] * p.layers + [1]
        dtype = sbs.DTYPES[p.dtype]
        models[key] = hv.mlp(sizes, activation="tanh", seed=0, dtype=dtype).requires_grad_(False)
    g = torch.Generator().manual_seed(p.batch)
    return models[key], torch.randn(p.batch, p.d, generator=g, dtype=sbs.DTYPES[p.dtype])


# --------------------------------------------------------------------------------------------
# The methods
# --------------------------------------------------------------------------------------------


def prime(unavailable: dict) -> float:
    """Seconds spent starting what every later point reuses — Inductor (its first compile
    starts a pool of compiler processes), XLA, folx, hessviz — on a throwaway model, so that
    the first grid point is not measured beside that start-up."""
    start = time.perf_counter()
    p = Point("float64", 2, 8, 2, 16)
    model, X = problem(p, {})
    for m in methods(p, model, X, unavailable, {}, float("inf")):
        if not m.skip:
            m.build()()
    return time.perf_counter() - start


def gemm_yardstick(p: Point):
    """Build step: the ``torch.mm`` calls of the FLOP formula on preallocated operands."""
    dtype, (d, w, L, B) = sbs.DTYPES[p.dtype], (p.d, p.width, p.layers, p.batch)

    def build():
        g = torch.Generator().manual_seed(0)

        def rand(*shape):
            return torch.rand(*shape, generator=g, dtype=dtype)

        x, w1, o1 = rand(B, d), rand(d, w), rand(B, w)  # first layer: values only
        a, wh, oh = rand((d + 2) * B, w), rand(w, w), rand((d + 2) * B, w)  # value, ∂/∂x_j, Δ
        lap, wo, oo = rand(B, w), rand(w, 1), rand(B, 1)  # output layer: the Laplacian only

        def run():
            torch.mm(x, w1, out=o1)
            for _ in range(L - 1):
                torch.mm(a, wh, out=oh)
            return torch.mm(lap, wo, out=oo)

        return run

    return build


def hv_compiled(model, X):
    """A :class:`Method` build step: ``hv.compile(model, X, batched=True, ops=("laplacian",))``
    (compiled, checked and raced against the plain kernel here), then its Laplacian of ``X``."""
    import hessviz as hv

    def build():
        handle = hv.compile(model, X, batched=True, ops=("laplacian",))
        kernel = handle.kernels["laplacian"]
        if not kernel.startswith("compiled"):
            print(f"hv.compile: {kernel}", file=sys.stderr)
        return lambda: handle.laplacian(X)

    return build


def methods(p: Point, model, X, unavailable: dict, predicted: dict, limit: float) -> list[Method]:
    """hessviz first (the reference), the GEMM yardstick, then the peers of this process."""
    import hessviz as hv

    dtype = sbs.DTYPES[p.dtype]
    out = [
        Method(HV, lambda: lambda: hv.laplacian(model, X, batched=True)),
        Method(HVC, hv_compiled(model, X)),
        Method(GEMM, gemm_yardstick(p), check=False),
    ]
    if unavailable["folx"] is None:
        import jax
        from folx import forward_laplacian

        u = sbs.jax_mlp(model)
        folx_fn = jax.vmap(lambda x: forward_laplacian(u)(x).laplacian)  # (B, 1)
        out.append(Method(FOLX, sbs.jax_jitted(folx_fn, X)))
    else:
        out.append(Method(FOLX, None, unavailable["folx"]))
    if unavailable["jax"] is None:
        jj_fn = sbs.jax_second_directional(sbs.jax_mlp(model), p.d, p.dtype)  # (B, d, 1)
        out.append(Method(JAXJJ, sbs.jax_jitted(lambda X: jj_fn(X).sum(1), X)))
    else:
        out.append(Method(JAXJJ, None, unavailable["jax"]))
    lap = sbs.func_ops(model, p.d, dtype)["laplacian"]
    out.append(Method(FUNC, lambda: lambda: lap(X)))
    trainable = sbs.func_ops(sbs.trainable_copy(model), p.d, dtype)["laplacian"]
    out.append(Method(COMPILED, sbs.compiled(trainable, X)))
    for m in out:
        guess = predicted.get((m.label, p.dtype, p.d))
        if m.label in LIMITED and guess and guess * p.flops > limit:
            m.skip = (
                f"skipped: predicted {guess * p.flops:.0f} s per call (> --peer-limit {limit:g})"
            )
    return out


def jet_methods(p: Point, model, X) -> list[Method]:
    """The second process's pair: hessviz (the reference), then jet's collapsed Laplacian."""
    from jet import capture_graph, common_subexpression_elimination, laplacian
    from torch.func import vmap

    import hessviz as hv

    def build_jet():
        lap = laplacian(model, (X[0],), collapsed=True)  # u: (d,) → (1,), Δu: (1,)
        graph, _ = capture_graph(lap, (X[0],))
        common_subexpression_elimination(graph.graph)
        graph.recompile()
        batched = vmap(graph)
        return lambda: batched(X)  # (B, 1)

    return [
        Method(HV, lambda: lambda: hv.laplacian(model, X, batched=True)),
        Method(HVC, hv_compiled(model, X)),
        Method(JET, build_jet),
    ]


# --------------------------------------------------------------------------------------------
# Running the grid (this process), and jet's rows (the Python 3.12 process)
# --------------------------------------------------------------------------------------------


def time_points(points: list[Point], args, make_methods, process: str, bar=None) -> list[dict]:
    """Measure every point; one row per (point, method), with the point's fields."""
    rows, models, predicted = [], {}, {}
    for p in points:
        if bar:
            bar.update(f"pinn {p.label}")
        model, X = problem(p, models)
        ms = make_methods(p, model, X, predicted)
        measured = sbs.measure(
            ms, sbs.DTYPES[p.dtype], rounds=args.rounds, budget_s=args.budget,
            min_sample_s=args.min_sample,
        )  # fmt: skip
        hv_ms = measured[0]["median_ms"]
        for r in measured:
            if r["median_ms"] is not None:
                predicted[(r["method"], p.dtype, p.d)] = r["median_ms"] / 1e3 / p.flops
            rows.append(
                {
                    "process": process,
                    **asdict(p),
                    "gemm_gflop": p.flops / 1e9,
                    "hv_gflops": p.flops / hv_ms / 1e6 if r["method"] == HV else None,
                    **r,
                }
            )
        if bar:
            bar.update(f"pinn {p.label}", step=1)
    return rows


def jet_worker(args) -> None:
    """Second process (``.venv-jet``): print one JSON line per row of hessviz and jet."""
    sbs.one_thread()
    points = [Point(**d) for d in json.loads(args.jet_worker)]
    rows = time_points(points, args, lambda p, model, X, _: jet_methods(p, model, X), "jet")
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "jet": sbs.version("jet")}
    print(json.dumps({"env": env}), flush=True)
    for r in rows:
        print(json.dumps(r), flush=True)


def start_jet(points: list[Point], args, core: list[int]) -> tuple[tuple | None, str]:
    """Start the Python 3.12 process that times hessviz and jet on ``points``; it runs while
    this process works through the grid, pinned to ``core`` (a core of its own where there is
    a second one; samples are CPU time). Returns (the process, its stdout and stderr files), or
    None and why not."""
    python = Path(args.jet_python)
    if args.no_jet:
        return None, "jet left out (--no-jet)"
    if not python.exists():
        return None, f"jet not measured: {python} absent (see benchmarks/README.md, 'jet')"
    cmd = [str(python), str(Path(__file__).resolve()), "--jet-worker", json.dumps(
        [asdict(p) for p in points])]  # fmt: skip
    cmd += ["--rounds", str(args.rounds), "--budget", str(args.budget)]
    cmd += ["--min-sample", str(args.min_sample)]
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    # it would inherit this process's pinning to the first core
    move = (lambda: os.sched_setaffinity(0, set(core))) if core else None
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, preexec_fn=move)
    return (proc, out, err), ""


def finish_jet(started: tuple | None, note: str) -> tuple[list[dict], dict, str]:
    """Wait for the jet process: its rows, its environment, and a note (why not, or '')."""
    if started is None:
        return [], {}, note
    proc, out, err = started
    proc.wait()
    out.seek(0)
    err.seek(0)
    rows, env = [], {}
    for line in out:
        if line.startswith("{"):
            d = json.loads(line)
            env = d["env"] if "env" in d else env
            rows += [] if "env" in d else [d]
    if proc.returncode != 0:
        return rows, env, f"jet process failed (exit {proc.returncode}): {err.read()[-400:]}"
    return rows, env, ""


GEMM_SHAPES = ((12 * 4096, 256), (102 * 1024, 64))
"""``(rows, k)`` of the GEMM-rate block, ``(rows, k) @ (k, k)``: a hidden layer of the forward
Laplacian at d = 10, B = 4096, w = 256 and at d = 100, B = 1024, w = 64."""


def gemm_rates() -> list[dict]:
    """GFLOP/s (CPU time) of the :data:`GEMM_SHAPES` in torch (MKL), numpy (its own BLAS) and
    XLA (``jit(jnp.dot)``), side by side in this process."""
    return [row for name in sbs.DTYPES for shape in GEMM_SHAPES for row in _gemm_rate(name, *shape)]


def _gemm_rate(name: str, m: int, k: int) -> list[dict]:
    a = torch.rand(m, k, dtype=sbs.DTYPES[name])
    b = torch.rand(k, k, dtype=sbs.DTYPES[name])
    an, bn = a.numpy(), b.numpy()
    fns = {"torch.mm": lambda: torch.mm(a, b), "numpy dot": lambda: an @ bn}
    if sbs.missing("jax") is None:
        import jax

        aj, bj = jax.device_put(an), jax.device_put(bn)
        dot = jax.jit(jax.numpy.dot).lower(aj, bj).compile()
        fns["XLA jnp.dot"] = lambda: dot(aj, bj).block_until_ready()
    sync = timing.synchronizer("cpu")
    est = {lib: timing.warm_up(f, sync, slow_s=0.5)[0] for lib, f in fns.items()}
    ts = timing.interleaved(
        fns, est, sync, rounds=7, min_sample_s=0.05, budget_s=1.0, clock=time.process_time
    )
    return [
        {"dtype": name, "shape": f"({m}, {k}) @ ({k}, {k})", "library": lib,
         "gflops": 2 * m * k * k / t.median_s / 1e9}
        for lib, t in ts.items()
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Summary, tables
# --------------------------------------------------------------------------------------------


def _ratios(rows, method, process="main", dims=None) -> list[float]:
    return [
        r["ratio"]
        for r in rows
        if r["method"] == method and r["process"] == process and r["ratio"] is not None
        and (dims is None or r["d"] in dims)
    ]  # fmt: skip


def _over(rows, method, process, by, dims=None, by_process=None) -> list[float]:
    """Per point: ``method``'s ratio over ``by``'s, both taken against plain hessviz (which
    cancels): ``(t_peer / t_hv) / (t_by / t_hv)``. ``by`` is read from ``by_process`` (any
    process when None: the GEMM yardstick runs in the main one only)."""
    base = {_key(r): r["ratio"] for r in rows if r["method"] == by and r["ratio"]
            and by_process in (None, r["process"])}  # fmt: skip
    return [
        r["ratio"] / base[_key(r)]
        for r in rows
        if r["method"] == method and r["process"] == process and r["ratio"]
        and _key(r) in base and (dims is None or r["d"] in dims)
    ]  # fmt: skip


def _ceilings(rows, method, process, dims) -> list[float]:
    """Per point: the peer's time over the GEMM yardstick's (jet's hessviz is the one of its
    own process, the yardstick's the main one's)."""
    return _over(rows, method, process, GEMM, dims)


def _against_compiled(rows, method, process, dims=None) -> list[float]:
    """Per point: peer time / hv.compile time, both from ``process``."""
    return _over(rows, method, process, HVC, dims, by_process=process)


def _key(r: dict) -> tuple:
    return tuple(r[f.name] for f in fields(Point))


def summary_lines(rows: list[dict], jet_note: str, n_points: int) -> list[str]:
    """The headline: each peer's geo-mean ratio, the issue's targets with PASS/FAIL."""

    def stats(xs):
        return f"geo-mean {sbs.fmt_x(sbs.geo_mean(xs))}, min {sbs.fmt_x(min(xs))}, max " \
            f"{sbs.fmt_x(max(xs))} over {len(xs)} point(s)"  # fmt: skip

    out = [f"PINN Laplacian — CPU, 1 thread, tanh MLPs u: R^d → R, {n_points} point(s); "
           "ratio = peer time / hessviz time (> 1: hessviz faster)"]  # fmt: skip
    folx = _ratios(rows, FOLX, dims=FOLX_DIMS)
    if folx:
        g = sbs.geo_mean(folx)
        ok = g >= TARGET_FOLX and min(folx) >= FLOOR_FOLX
        out.append(
            f"  vs folx, d ∈ {{2, 3, 10}}: {stats(folx)}  (target geo-mean >= {TARGET_FOLX}x, "
            f"min >= {FLOOR_FOLX}x)  {'PASS' if ok else 'FAIL'}"
        )
    else:
        out.append("  vs folx: not measured (folx absent, or no point with d <= 10)")
    folx_c = _against_compiled(rows, FOLX, "main", FOLX_DIMS)
    if folx_c:
        ok = sbs.geo_mean(folx_c) >= TARGET_FOLX and min(folx_c) >= FLOOR_FOLX
        out.append(f"  hv.compile vs folx, d ∈ {{2, 3, 10}}: {stats(folx_c)}  "
                   f"{'PASS' if ok else 'FAIL'}")  # fmt: skip
    folx100 = _ratios(rows, FOLX, dims=(100,))
    if folx100:
        out.append(f"  vs folx, d = 100: {stats(folx100)}  (no target)")
    jet = _ratios(rows, JET, process="jet")
    if jet:
        g = sbs.geo_mean(jet)
        below = sum(x < TARGET_JET for x in jet)
        out.append(
            f"  vs jet (collapsed Taylor mode; its own process): {stats(jet)}; {below} point(s) "
            f"below {TARGET_JET}x  (target geo-mean >= {TARGET_JET}x)  "
            f"{'PASS' if g >= TARGET_JET else 'FAIL'}"
        )
        jet_c = _against_compiled(rows, JET, "jet")
        if jet_c:
            out.append(f"  hv.compile vs jet (its own process): {stats(jet_c)}  "
                       f"{'PASS' if sbs.geo_mean(jet_c) >= TARGET_JET else 'FAIL'}")  # fmt: skip
        main_hv = {_key(r): r["median_ms"] for r in rows if r["method"] == HV
                   and r["process"] == "main"}  # fmt: skip
        same = [r["median_ms"] / main_hv[_key(r)] for r in rows
                if r["process"] == "jet" and r["method"] == HV and _key(r) in main_hv]  # fmt: skip
        out.append(
            f"  hessviz's time in jet's process / in this one: geo-mean "
            f"{sbs.geo_mean(same):.2f}, min {min(same):.2f}, max {max(same):.2f} (same code, "
            "other Python and torch build)"
        )
    else:
        out.append(f"  vs jet: {jet_note or 'not measured'}")
    for label, what in ((JAXJJ, "JAX jit jvp∘jvp"), (FUNC, "torch.func jvp∘jvp (eager)"),
                        (COMPILED, "torch.compile(torch.func jvp∘jvp), steady state")):  # fmt: skip
        xs = _ratios(rows, label)
        if xs:
            out.append(f"  vs {what}: {stats(xs)}  (no target)")
    own = [1 / x for x in _ratios(rows, HVC)]
    if own:
        builds = sorted(r["build_s"] for r in rows if r["method"] == HVC and r["median_ms"])
        mid = builds[len(builds) // 2]
        out.append(f"  hv.compile's speed-up over plain hv.laplacian: {stats(own)}; its compile "
                   f"(export, AOTInductor, check, race) median {mid:.1f} s")  # fmt: skip
    compiles = [r["build_s"] for r in rows if r["method"] == COMPILED and r["median_ms"]]
    if compiles:
        compiles.sort()
        out.append(f"  torch.compile first call (compile + 1 run): median "
                   f"{compiles[len(compiles) // 2]:.1f} s, max {compiles[-1]:.1f} s")  # fmt: skip
    gemm = _ratios(rows, GEMM)
    if gemm:
        out.append(
            f"  GEMM yardstick / hessviz time: geo-mean {sbs.geo_mean(gemm):.2f}, min "
            f"{min(gemm):.2f}, max {max(gemm):.2f} (1.0: hessviz all GEMM at torch.mm's rate)"
        )
        ceilings = [f"{label} {sbs.fmt_x(sbs.geo_mean(xs))}" for label, xs in
                    ((FOLX, _ceilings(rows, FOLX, "main", FOLX_DIMS)),
                     (JET, _ceilings(rows, JET, "jet", None))) if xs]  # fmt: skip
        out.append(
            "  ceiling (peer time / GEMM yardstick time: the ratio a hessviz made of nothing but "
            f"those GEMMs would reach): geo-mean vs {', vs '.join(ceilings)} (folx over d <= 10)"
        )
    single = {_key(r) for r in rows if r["process"] == "main" and r["method"] == HV
              and r["runs"] == 1}  # fmt: skip
    if single:
        out.append(f"  {len(single)} point(s) timed with one sample per method (calls longer "
                   "than --budget; marked ¹ in the tables): noisier than the rest")  # fmt: skip
    bad = [r for r in rows if r["note"].startswith("MISMATCH")]
    out.append(
        "  exactness: every peer within 1e-8 (float64) / 1e-4 (float32) of hessviz  PASS"
        if not bad
        else f"  exactness: {len(bad)} MISMATCH row(s): "
        + "; ".join(f"{r['method']} {r['dtype']} d={r['d']} {r['note']}" for r in bad[:4])
        + "  FAIL"
    )
    return out


def _cell(r: dict | None) -> str:
    if r is None:
        return "–"
    if r["median_ms"] is None:
        return "skip" if r["note"].startswith("skipped") else "n/a"
    flag = " ⚠" if r["note"].startswith("MISMATCH") else ""
    return sbs.fmt_x(r["ratio"]) + ("¹" if r["runs"] == 1 else "") + flag


def write_markdown(path: Path, rows, env, summary, gemm, points, jet_env, jet_note) -> None:
    by = {(r["process"], Point(**{f.name: r[f.name] for f in fields(Point)}), r["method"]): r
          for r in rows}  # fmt: skip
    jet_line = (
        f" jet rows: a second process, Python {jet_env['python']}, torch {jet_env['torch']}, "
        f"jet-for-pytorch {jet_env['jet']}, hessviz timed again beside it."
        if jet_env
        else f" {jet_note}"
    )
    lines = [
        "# PINN Laplacian: hessviz vs folx, JAX, torch.func, torch.compile, jet",
        "",
        "<!-- summary:start -->",
        sbs.environment_line(env, f", folx {env.get('folx') or 'absent'}") + jet_line,
        "",
        "```",
        *summary,
        "```",
        "<!-- summary:end -->",
        "",
        "Generated by `benchmarks/pinn.py` (module docstring: the protocol, the peers, the FLOP "
        "formula). Cells are **peer time / hessviz time** (> 1: hessviz faster), medians of "
        "per-round ratios; *hessviz* is its median time per call, *GFLOP/s* the formula's FLOPs "
        "over that time, *GEMM/hv* the time of those bare `torch.mm` calls over hessviz's. "
        '*hv.compile*: `hv.compile(model, X, batched=True, ops=("laplacian",))`\'s time '
        "against plain hessviz's (< 1: the handle is faster); its summary lines divide each "
        "peer's ratio by it. *compile s*: torch.compile's first call (compile + one run). "
        "*jet* is taken against "
        "hessviz timed in jet's process. `skip`: predicted above `--peer-limit` (see the CSV's "
        "note); ⚠: result off hessviz's by more than the tolerance. ¹: one timed sample (a "
        "call longer than `--budget`), so that ratio compares single calls taken at different "
        "moments: at d = 100 the same point moved by up to 2x between runs on this shared "
        "machine; the rows with several rounds are the steadier ones.",
        "",
    ]
    if gemm:
        libs = list(dict.fromkeys(g["library"] for g in gemm))
        lines += ["GEMM rate in this process, one thread, GFLOP/s (CPU time):", "",
                  "| dtype | shape | " + " | ".join(libs) + " |",
                  "|---|---|" + "---:|" * len(libs)]  # fmt: skip
        for dt, shape in dict.fromkeys((g["dtype"], g["shape"]) for g in gemm):
            cells = [f"{g['gflops']:.0f}" for g in gemm if (g["dtype"], g["shape"]) == (dt, shape)]
            lines.append(f"| {dt} | `{shape}` | " + " | ".join(cells) + " |")
        lines.append("")
    head = ("| d | w | L | B | hessviz | GFLOP/s | GEMM/hv | hv.compile | folx | JAX jvp∘jvp | "
            "torch.func | compiled | compile s | jet |")  # fmt: skip
    for dt in sbs.DTYPES:
        mine = [p for p in points if p.dtype == dt]
        if not mine:
            continue
        lines += [f"## {dt}", "", head, "|---:|---:|---:|---:|" + "---:|" * 10]
        for p in mine:
            hv_row, gemm_row = by.get(("main", p, HV)), by.get(("main", p, GEMM))
            comp = by.get(("main", p, COMPILED))
            cells = [
                str(p.d), str(p.width), str(p.layers), str(p.batch),
                sbs.fmt_ms(hv_row["median_ms"]) + ("¹" if hv_row["runs"] == 1 else ""),
                f"{hv_row['hv_gflops']:.1f}",
                "–" if gemm_row["ratio"] is None else f"{gemm_row['ratio']:.2f}",
                _cell(by.get(("main", p, HVC))),
                _cell(by.get(("main", p, FOLX))),
                _cell(by.get(("main", p, JAXJJ))),
                _cell(by.get(("main", p, FUNC))),
                _cell(comp),
                "–" if comp is None or comp["median_ms"] is None else f"{comp['build_s']:.1f}",
                _cell(by.get(("jet", p, JET))),
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    notes = sorted({f"{r['method']}: {r['note']}" for r in rows if r["note"]
                    and not r["note"].startswith("skipped")})  # fmt: skip
    if notes:
        lines += ["Notes:", "", *[f"- {n}" for n in notes], ""]
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="benchmarks/pinn.py",
        description="The PINN Laplacian grid: hv.laplacian vs folx, JAX jvp∘jvp, torch.func "
        "(eager and torch.compile) and jet, one thread, one process per Python. Writes "
        "<out>/<tag>.md and .csv.",
    )
    ap.add_argument("--quick", action="store_true", help="4 points, few rounds (about a minute)")
    ap.add_argument(
        "--points", action="append", default=[],
        help="run only points matching key=value[,key=value...] (keys dtype, d, w, L, B); "
        "repeat for several filters, e.g. --points d=100,w=256 --points d=2,dtype=float32",
    )  # fmt: skip
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per point")
    ap.add_argument("--budget", type=float, default=None, help="max seconds per method/point")
    ap.add_argument("--min-sample", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--peer-limit", type=float, default=None,
        help="skip torch.func / compiled / JAX jvp∘jvp where predicted slower than this "
        "(seconds per call; default 2, with --quick 1)",
    )  # fmt: skip
    ap.add_argument("--jet-python", default=str(JET_PYTHON), help="Python of the jet venv")
    ap.add_argument("--no-jet", action="store_true", help="leave jet out")
    ap.add_argument("--out", default=str(HERE / "results"), help="output folder")
    ap.add_argument("--tag", default=None, help="file name stem (default pinn; quick-pinn)")
    ap.add_argument("--jet-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for flt in args.points:
        for kv in filter(None, flt.split(",")):
            if kv.split("=", 1)[0] not in KEYS or "=" not in kv:
                ap.error(f"--points {flt!r}: use key=value with keys {', '.join(KEYS)}")
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.budget = args.budget or (0.3 if args.quick else 0.4)
    args.min_sample = args.min_sample or (0.005 if args.quick else 0.02)
    args.peer_limit = args.peer_limit or (1.0 if args.quick else 2.0)
    args.tag = args.tag or ("quick-pinn" if args.quick else "pinn")
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return args


def main(argv=None, command: str | None = None) -> int:
    """Run the suite; ``command`` is the command line shown in the results (run.py passes its
    ``./dev bench …``)."""
    args = parse_args(argv)
    if args.jet_worker:
        jet_worker(args)
        return 0
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    sbs.one_thread()  # this process: the first core
    start = time.perf_counter()
    points = select(QUICK if args.quick else GRID, args.points)
    if not points:
        sys.exit("--points matched no grid point")
    env = sbs.environment(command or " ".join([".venv/bin/python benchmarks/pinn.py",
                                               *args.argv]))  # fmt: skip
    env["folx"] = sbs.version("folx") if sbs.missing("folx") is None else None
    unavailable = {"folx": sbs.missing("folx"), "jax": sbs.missing("jax")}
    bar = timing.Progress(len(points) + 2)

    def make(p, model, X, predicted):
        return methods(p, model, X, unavailable, predicted, args.peer_limit)

    jet_run, jet_note = start_jet(points, args, cores[1:2])
    bar.update("pinn: start-up (first compile, first jit)")
    env["prime_s"] = prime(unavailable)
    rows = time_points(points, args, make, "main", bar)
    bar.update("pinn: waiting for jet's process")
    jet_rows, jet_env, jet_note = finish_jet(jet_run, jet_note)
    bar.update("pinn: GEMM rates", step=1)
    gemm = gemm_rates()
    bar.update("pinn: done", step=1)
    bar.close()
    rows += jet_rows
    env["load_end"] = sbs.loadavg()
    summary = summary_lines(rows, jet_note, len(points))
    summary.append(
        f"  wall time {(time.perf_counter() - start) / 60:.1f} min (start-up before the first "
        f"point: {env['prime_s']:.0f} s)"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sbs.write_csv(out / f"{args.tag}.csv", rows)
    write_markdown(out / f"{args.tag}.md", rows, env, summary, gemm, points, jet_env, jet_note)
    print("\n".join(summary))
    print(f"results: {out / args.tag}.md, .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
