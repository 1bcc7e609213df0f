"""hessviz on models written the way users write them, against torch.func (issue 11).

Run ``.venv/bin/python benchmarks/graph_models.py`` (or ``./dev bench --suite graph``; plain
``./dev bench`` runs it after the MLP grid); ``--quick`` runs one size per family in < 30 s.
Writes ``<out>/graph.md`` and ``graph.csv`` (``quick-graph.*`` with ``--quick``) and prints the
summary lines.

Families (CPU, float64, one thread, batched inputs ``(B, n)``), each at a few input sizes:

1. ``custom MLP``: a hand-written ``forward`` (``self.fc3(torch.tanh(self.fc2(torch.tanh(
   self.fc1(x)))))``) and its ``nn.Sequential`` twin with the same weights;
2. ``residual MLP``: ``h = h + torch.tanh(lin(h))`` blocks in an ``nn.ModuleList``;
3. ``LayerNorm MLP``: Linear → LayerNorm → GELU → Linear → LayerNorm → tanh → Linear;
4. ``PINN``: a DeepXDE-style ``ModuleList`` network with the hard boundary condition
   ``x[:, :1] * (1 - x[:, :1]) * net(x)`` (scalar output).

Per row: ``hv.hessian(model, X, batched=True)`` (``method="auto"``, the method it runs is
recorded) against ``vmap(torch.func.hessian(f))``, and ``hv.hessian_diagonal`` against
torch.func full Hessian then ``torch.diagonal``. Every result is compared with torch.func before
it is timed (max relative difference ≤ 1e-8). The first call on a fresh copy of the model
(capture, self-check and plan building) is timed separately. Optionally (``--seq-grid``, on by
default) a few points of the ``nn.Sequential`` grid of ``benchmarks/run.py`` are re-timed, next to
the speedups committed in ``results/cpu.csv``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # this checkout's hessviz; the helper modules beside us

import peers  # noqa: E402
import timing  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sidebyside import code_version, loadavg  # noqa: E402 - one copy, shared with pinn/tiny
from torch import nn  # noqa: E402

TOL = 1e-8
TARGETS = {"hessian": 2.5, "diagonal": 4.0}  # geo-mean speedup over torch.func (issue 11)
TWIN_TARGET = 1.25  # custom forward time / nn.Sequential twin time
OPS = ("hessian", "diagonal")
OP_TITLES = {
    "hessian": "Full Hessian: hv.hessian vs vmap(torch.func.hessian)",
    "diagonal": "Diagonal: hv.hessian_diagonal vs torch.func full Hessian → torch.diagonal",
}


# --------------------------------------------------------------------------------------------
# The models, written the way their users write them
# --------------------------------------------------------------------------------------------


class CustomMLP(nn.Module):
    """A hand-written forward: ``fc3(tanh(fc2(tanh(fc1(x)))))``."""

    def __init__(self, n: int, width: int, m: int):
        super().__init__()
        self.fc1 = nn.Linear(n, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, m)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def sequential_twin(model: CustomMLP) -> nn.Sequential:
    """The same network as an ``nn.Sequential``, with copies of the same weights."""
    return nn.Sequential(
        copy.deepcopy(model.fc1), nn.Tanh(), copy.deepcopy(model.fc2), nn.Tanh(),
        copy.deepcopy(model.fc3),
    )  # fmt: skip


class ResidualMLP(nn.Module):
    """``h = h + tanh(lin(h))`` blocks in a ModuleList between an input and an output layer."""

    def __init__(self, n: int, width: int, m: int, blocks: int = 2):
        super().__init__()
        self.inp = nn.Linear(n, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.out = nn.Linear(width, m)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for lin in self.blocks:
            h = h + torch.tanh(lin(h))
        return self.out(h)


class LayerNormMLP(nn.Module):
    """Linear → LayerNorm → GELU → Linear → LayerNorm → tanh → Linear."""

    def __init__(self, n: int, width: int, m: int):
        super().__init__()
        self.fc1 = nn.Linear(n, width)
        self.ln1 = nn.LayerNorm(width)
        self.fc2 = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.head = nn.Linear(width, m)

    def forward(self, x):
        h = F.gelu(self.ln1(self.fc1(x)))
        h = torch.tanh(self.ln2(self.fc2(h)))
        return self.head(h)


class PINN(nn.Module):
    """DeepXDE's FNN (a ModuleList of Linears, tanh between them) with the hard boundary
    condition ``u = x0 (1 - x0) net(x)``: zero at x0 = 0 and x0 = 1."""

    def __init__(self, n: int, width: int, m: int, hidden: int = 3):
        super().__init__()
        sizes = [n] + [width] * hidden + [m]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = torch.tanh

    def forward(self, x):
        h = x
        for lin in self.linears[:-1]:
            h = self.activation(lin(h))
        u = self.linears[-1](h)
        return x[:, :1] * (1 - x[:, :1]) * u


@dataclass(frozen=True)
class Case:
    """One row: a family at one size."""

    family: str
    n: int
    width: int
    m: int
    hidden: int
    batch: int

    @property
    def label(self) -> str:
        return f"n={self.n} w={self.width} m={self.m} L={self.hidden} B={self.batch}"


FAMILIES = {
    # name: (builder(n, width, m), m, hidden layers)
    "custom MLP": (CustomMLP, 3, 2),
    "residual MLP": (ResidualMLP, 3, 3),
    "LayerNorm MLP": (LayerNormMLP, 3, 2),
    "PINN (hard BC)": (PINN, 1, 3),
}
SIZES = (2, 10, 64)
QUICK_SIZES = (10,)
WIDTH, BATCH = 64, 64
SEQ_GRID_POINTS = 3  # the first points of run.GRID re-timed for "nn.Sequential grid unchanged"


def cases(sizes) -> list[Case]:
    return [
        Case(fam, n, WIDTH, m, hidden, BATCH)
        for fam, (_, m, hidden) in FAMILIES.items()
        for n in sizes
    ]


def build(case: Case):
    builder = FAMILIES[case.family][0]
    torch.manual_seed(0)
    model = builder(case.n, case.width, case.m).double()
    g = torch.Generator().manual_seed(1)
    X = torch.rand(case.batch, case.n, generator=g, dtype=torch.float64)  # PINN domain [0, 1]
    return model, X


# --------------------------------------------------------------------------------------------
# Calls
# --------------------------------------------------------------------------------------------


def hv_call(op: str, model, X):
    import hessviz as hv

    fn = hv.hessian if op == "hessian" else hv.hessian_diagonal
    return lambda: fn(model, X, batched=True)


def func_call(op: str, model, X):
    """``vmap(torch.func.hessian(lambda s: model(s[None])[0]))``, and its diagonal."""
    build_ = peers.func_hessian if op == "hessian" else peers.func_full_then_diagonal
    return build_(model, X)


def max_rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    if a.shape != ref.shape:
        return float("inf")
    scale = float(ref.abs().max()) or 1.0
    return float((a.detach() - ref).abs().max()) / scale


def geo_mean(xs) -> float:
    xs = [x for x in xs if x and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def fmt_ms(s: float) -> str:
    x = s * 1e3
    if x >= 100:
        return f"{x:.0f} ms"
    if x >= 10:
        return f"{x:.1f} ms"
    return f"{x:.2f} ms" if x >= 0.1 else f"{x * 1e3:.0f} µs"


def fmt_x(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.2f}x"


# --------------------------------------------------------------------------------------------
# One row: a family at one size, both ops, every callable timed in the same interleaved rounds
# --------------------------------------------------------------------------------------------


def _first_call(op: str, model, X) -> tuple[float, torch.Tensor]:
    """Seconds of hessviz's first call on a fresh copy of ``model`` (its own plan cache: capture,
    self-check, plan building), and the result."""
    fresh = copy.deepcopy(model)
    start = time.perf_counter()
    out = hv_call(op, fresh, X)()
    return time.perf_counter() - start, out


def time_case(case: Case, ops, args, sync) -> list[dict]:
    """Check, then time hessviz (auto), torch.func and, where they apply, the nn.Sequential
    twin and ``method="graph"`` (when auto picks another method); one dict per op and method."""
    import hessviz as hv

    model, X = build(case)
    twin = sequential_twin(model) if case.family == "custom MLP" else None
    fns, meta = {}, {}
    for op in ops:
        auto = hv.auto_method(model, X, op=op, batched=True)
        first, first_out = _first_call(op, model, X)
        ref = func_call(op, model, X)().detach()
        entries = {"hessviz auto": hv_call(op, model, X), "torch.func": func_call(op, model, X)}
        if twin is not None:
            entries["nn.Sequential twin"] = hv_call(op, twin, X)
        note = "" if auto == "graph" else hv.explain(model, X, op=op, batched=True).reason
        if auto != "graph":  # what the graph engine would do here, when it can plan
            hv_fn = hv.hessian if op == "hessian" else hv.hessian_diagonal

            def forced(hv_fn=hv_fn):
                return hv_fn(model, X, batched=True, method="graph")

            try:
                forced()
                entries["method='graph'"] = forced
            except hv.HessvizError as err:
                why = str(err).split("cannot plan for this f: ", 1)[-1].split(" Use method=")[0]
                if why.rstrip(".") not in note:
                    note += f" method='graph' refused: {why}"
        for label, fn in entries.items():
            key = f"{op}|{label}"
            seconds, result = timing.warm_up(fn, sync, slow_s=0.5)
            diff = max_rel_diff(result, ref)
            if label == "hessviz auto":
                diff = max(diff, max_rel_diff(first_out, ref))
            fns[key] = fn
            meta[key] = {
                "op": op,
                "method": label,
                "estimate": seconds,
                "max_rel_diff": diff,
                "ran": (
                    auto
                    if label == "hessviz auto"
                    else hv.auto_method(twin, X, op=op, batched=True)
                    if label == "nn.Sequential twin"
                    else label
                ),
                "first_call_ms": first * 1e3 if label == "hessviz auto" else None,
                "note": note.strip() if label == "hessviz auto" else "",
            }
            if label == "nn.Sequential twin":
                meta[key]["first_call_ms"] = _first_call(op, twin, X)[0] * 1e3
    timings = timing.interleaved(
        fns,
        {k: m["estimate"] for k, m in meta.items()},
        sync,
        rounds=args.rounds,
        min_sample_s=args.min_sample,
        budget_s=args.budget,
    )
    rows = []
    for key, m in meta.items():
        t = timings[key]
        ref_t = timings[f"{m['op']}|torch.func"]
        mine = timings.get(f"{m['op']}|hessviz auto")
        twin_t = timings.get(f"{m['op']}|nn.Sequential twin")
        rows.append(
            {
                "family": case.family,
                "n": case.n,
                "width": case.width,
                "m": case.m,
                "hidden": case.hidden,
                "batch": case.batch,
                "op": m["op"],
                "method": m["method"],
                "ran": m["ran"],
                **timing.columns(t),
                "speedup_vs_func": timing.speedup(ref_t, t),
                "custom_over_twin": (
                    timing.speedup(mine, twin_t)
                    if m["method"] == "hessviz auto" and twin_t is not None else None
                ),
                "first_call_ms": m["first_call_ms"],
                "max_rel_diff": m["max_rel_diff"],
                "note": m["note"]
                + ("; " if m["note"] else "") * (m["max_rel_diff"] > TOL)
                + (f"MISMATCH: max rel. diff {m['max_rel_diff']:.1e}"
                   if m["max_rel_diff"] > TOL else ""),
            }
        )  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------
# "nn.Sequential grid unchanged": a few points of benchmarks/run.py's grid, as run.py times them
# --------------------------------------------------------------------------------------------


def committed_grid_speedups(path: Path) -> dict:
    """``(task, n, width, m, layers, batch) → (auto's speedup, auto's ms)`` from a committed
    ``results/cpu.csv`` (empty if absent)."""
    out = {}
    if not path.exists():
        return out
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            auto = r["method"] == "hessviz auto" or r["method"].startswith("hessviz auto (")
            if auto and r["speedup_vs_ref"]:
                key = (r["task"], *(int(r[k]) for k in ("n", "width", "m", "layers", "batch")))
                out[key] = (float(r["speedup_vs_ref"]), float(r["median_ms"]))
    return out


def time_sequential_grid(points, ops, args, sync) -> list[dict]:
    import run

    import hessviz as hv

    committed = committed_grid_speedups(HERE / "results" / "cpu.csv")
    rows = []
    for cfg in points:
        model, X, _ = run.build_problem(cfg, "cpu")
        fns, meta = {}, {}
        for op in ops:
            ref_label = peers.REFERENCE[op]
            ref_builder = next(b for lbl, b, _ in peers.TORCH_PEERS[op] if lbl == ref_label)
            ref_fn = ref_builder(model, X, None)
            ref = ref_fn().detach()
            entries = {"hessviz auto": hv_call(op, model, X), ref_label: ref_fn}
            for label, fn in entries.items():
                key = f"{op}|{label}"
                seconds, result = timing.warm_up(fn, sync, slow_s=0.5)
                fns[key] = fn
                meta[key] = (op, label, seconds, max_rel_diff(result, ref))
        timings = timing.interleaved(
            fns, {k: v[2] for k, v in meta.items()}, sync, rounds=args.rounds,
            min_sample_s=args.min_sample, budget_s=args.budget,
        )  # fmt: skip
        for op in ops:
            ref_label = peers.REFERENCE[op]
            mine, ref_t = timings[f"{op}|hessviz auto"], timings[f"{op}|{ref_label}"]
            diff = max(meta[f"{op}|hessviz auto"][3], 0.0)
            old = committed.get((op, cfg.n, cfg.width, cfg.m, cfg.layers, cfg.batch))
            rows.append(
                {
                    "point": cfg.label,
                    "op": op,
                    "reference": ref_label,
                    "ran": hv.auto_method(model, X, op=op, batched=True),
                    "auto_ms": mine.median_s * 1e3,
                    "ref_ms": ref_t.median_s * 1e3,
                    "speedup": timing.speedup(ref_t, mine),
                    "committed_speedup": old[0] if old else None,
                    "committed_auto_ms": old[1] if old else None,
                    "max_rel_diff": diff,
                }
            )
    return rows


# --------------------------------------------------------------------------------------------
# Summary, markdown, CSV
# --------------------------------------------------------------------------------------------


def _auto_rows(rows, op):
    return [r for r in rows if r["op"] == op and r["method"] == "hessviz auto"]


def summary_lines(rows, seq_rows, env) -> list[str]:
    quick = " (quick run: the targets are defined on the full run)" if env["quick"] else ""
    lines = [
        f"hessviz graph-models benchmark — cpu, float64, batched B={BATCH}, "
        f"{len({(r['family'], r['n']) for r in rows})} rows{quick}, {env['threads']} thread(s), "
        f"torch {env['torch']}"
    ]
    for op in OPS:
        auto = _auto_rows(rows, op)
        if not auto:
            continue
        g = geo_mean([r["speedup_vs_func"] for r in auto])
        lo = min(auto, key=lambda r: r["speedup_vs_func"])
        ref = "vmap(torch.func.hessian)" if op == "hessian" else "torch.func full→diag"
        lines.append(
            f"  {op:9s} auto vs {ref}: geo-mean {fmt_x(g)} over {len(auto)} rows, min "
            f"{fmt_x(lo['speedup_vs_func'])} ({lo['family']} n={lo['n']})  "
            f"(target >= {TARGETS[op]:g}x)  {'PASS' if g >= TARGETS[op] else 'FAIL'}"
        )
    twin = [r for r in rows if r["custom_over_twin"] is not None]
    if twin:
        worst = max(twin, key=lambda r: r["custom_over_twin"])
        parts = ", ".join(
            f"{op} " + "/".join(fmt_x(r["custom_over_twin"]) for r in twin if r["op"] == op)
            for op in OPS if any(r["op"] == op for r in twin)
        )  # fmt: skip
        ok = worst["custom_over_twin"] <= TWIN_TARGET
        sizes = "/".join(str(n) for n in sorted({r["n"] for r in twin}))
        lines.append(
            f"  custom forward / nn.Sequential twin (time, n={sizes}): "
            f"{parts}  (target <= {TWIN_TARGET:g}x)  {'PASS' if ok else 'FAIL'}"
        )
    for op in OPS:
        auto = _auto_rows(rows, op)
        other = [r for r in auto if r["ran"] != "graph"]
        if auto:
            text = f"graph on {len(auto) - len(other)}/{len(auto)} rows"
            if other:
                text += "; not graph: " + ", ".join(
                    f"{r['family']} n={r['n']} → {r['ran']}" for r in other
                )
            lines.append(f"  auto picks ({op}): {text}")
    if seq_rows:
        for op in OPS:
            sr = [r for r in seq_rows if r["op"] == op]
            if not sr:
                continue
            now = geo_mean([r["speedup"] for r in sr])
            old = [r["committed_speedup"] for r in sr if r["committed_speedup"]]
            then = f", committed results/cpu.csv {fmt_x(geo_mean(old))}" if old else ""
            lines.append(
                f"  nn.Sequential grid ({len(sr)} points, {op} vs {sr[0]['reference']}): "
                f"geo-mean now {fmt_x(now)}{then} (no verdict: compare on a quiet machine)"
            )
    bad = [r for r in rows if r["max_rel_diff"] > TOL] + [
        r for r in seq_rows if r["max_rel_diff"] > TOL
    ]
    lines.append(
        f"  exactness: every timed result agrees with torch.func to {TOL:g} (relative)  PASS"
        if not bad
        else f"  exactness: {len(bad)} result(s) disagree with torch.func  FAIL"
    )
    return lines


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def _cell_first(r) -> str:
    if r["first_call_ms"] is None:
        return "–"
    return f"{fmt_ms(r['first_call_ms'] / 1e3)} ({r['first_call_ms'] / r['median_ms']:.0f}× steady)"


def write_markdown(path: Path, rows, seq_rows, env, summary) -> None:
    out = [
        "# hessviz on user-style models (graph engine) — cpu",
        "",
        f"- Command: `{env['command']}`. This suite alone: `.venv/bin/python "
        f"benchmarks/graph_models.py{' --quick' if env['quick'] else ''}` or `./dev bench --suite "
        f"graph{' --quick' if env['quick'] else ''}`; plain `./dev bench` runs them after the MLP "
        "grid.",
        f"- Machine: {env['machine']}. torch {env['torch']} ({env['threads']} thread), "
        f"Python {env['python']}; hessviz at {env['code']}; {env['date']}. Load average "
        "(1/5/15 min) at start "
        f"{env['load_start']}, at end {env['load_end']}.",
        "- Problems: float64, batched inputs `X` of shape `(B, n)` (uniform in [0, 1]), width "
        f"{WIDTH}, B = {BATCH}; `L` = hidden layers, `m` = outputs. Models are defined in "
        "`benchmarks/graph_models.py`, written as users write them (hand-written `forward`, "
        "`nn.ModuleList`, `torch.tanh`, `F.gelu`).",
        "- hessviz: `hv.hessian(model, X, batched=True)` and `hv.hessian_diagonal(...)`, "
        '`method="auto"`; *ran* is `hv.auto_method(model, X, op=..., batched=True)`. torch.func: '
        "`vmap(hessian(lambda s: model(s[None])[0]))(X)`, and `torch.diagonal(..., dim1=-2, "
        "dim2=-1)` of it for the diagonal.",
        "- Each time: median per call over up to "
        f"{env['rounds']} interleaved rounds after a warm-up (all callables of a row share the "
        "rounds, order rotating); a speedup is the median of per-round ratios `t(torch.func) / "
        "t(hessviz)`, above 1x is faster. *first call*: hessviz's first call on a fresh copy of "
        "the model (capture as ATen ops, self-check against double backward, plan building), in a "
        "process that has already captured another model "
        f"(the very first capture in this process took {env['prime_ms']:.0f} ms).",
        f"- Every result was compared with torch.func before timing: max relative difference "
        f"(max |a − b| / max |b|) ≤ {TOL:g}, column *rel. diff*.",
        "- Noise: the benchmark machine has 2 cores shared with other jobs; rows of identical "
        "code moved by 10–20% between runs there, a load average above ~2 makes single times "
        "unreliable (ratios, taken within a round, are steadier). Read the numbers of a run "
        "with the load average above.",
        "",
        "## Summary",
        "",
        "```",
        *summary,
        "```",
        "",
    ]
    for op in OPS:
        auto = _auto_rows(rows, op)
        if not auto:
            continue
        out += [f"## {OP_TITLES[op]}", ""]
        out += [
            "| model | size | hessviz auto | ran | torch.func | speedup | first call | rel. diff "
            "| note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in auto:
            ref = next(
                x for x in rows if x["op"] == op and x["method"] == "torch.func"
                and (x["family"], x["n"]) == (r["family"], r["n"])
            )  # fmt: skip
            forced = next(
                (x for x in rows if x["op"] == op and x["method"] == "method='graph'"
                 and (x["family"], x["n"]) == (r["family"], r["n"])), None,
            )  # fmt: skip
            note = r["note"]
            if forced:
                note = (note + " " if note else "") + (
                    f"With method='graph': {fmt_ms(forced['median_ms'] / 1e3)}, "
                    f"{fmt_x(forced['speedup_vs_func'])} vs torch.func."
                )
            size = f"n={r['n']} m={r['m']} L={r['hidden']}"
            out.append(
                f"| {r['family']} | {size} | {fmt_ms(r['median_ms'] / 1e3)} | {r['ran']} "
                f"| {fmt_ms(ref['median_ms'] / 1e3)} | **{fmt_x(r['speedup_vs_func'])}** "
                f"| {_cell_first(r)} | {r['max_rel_diff']:.0e} | {note.replace('|', '/')} |"
            )
        fams = list(dict.fromkeys(r["family"] for r in auto))
        per_fam = ", ".join(
            f"{fam} {fmt_x(geo_mean([r['speedup_vs_func'] for r in auto if r['family'] == fam]))}"
            for fam in fams
        )
        out += [
            "",
            f"Geo-mean over all {len(auto)} rows: "
            f"**{fmt_x(geo_mean([r['speedup_vs_func'] for r in auto]))}** "
            f"(target ≥ {TARGETS[op]:g}x). Per family: {per_fam}.",
            "",
        ]
    twin = [r for r in rows if r["method"] == "nn.Sequential twin"]
    if twin:
        out += [
            "## Custom forward vs its nn.Sequential twin (same weights)",
            "",
            "`CustomMLP.forward` is `self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))`; the "
            "twin is `nn.Sequential(fc1, nn.Tanh(), fc2, nn.Tanh(), fc3)` with copies of the same "
            'weights. Both through `method="auto"`. Ratio = time(custom) / time(twin), median of '
            f"per-round ratios (target ≤ {TWIN_TARGET:g}x).",
            "",
            "| op | size | custom forward | ran | nn.Sequential twin | ran | custom / twin "
            "| first call custom / twin |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for t in twin:
            c = next(
                x for x in rows if x["op"] == t["op"] and x["method"] == "hessviz auto"
                and (x["family"], x["n"]) == (t["family"], t["n"])
            )  # fmt: skip
            out.append(
                f"| {t['op']} | n={t['n']} m={t['m']} L={t['hidden']} "
                f"| {fmt_ms(c['median_ms'] / 1e3)} | {c['ran']} | {fmt_ms(t['median_ms'] / 1e3)} "
                f"| {t['ran']} | **{fmt_x(c['custom_over_twin'])}** "
                f"| {fmt_ms(c['first_call_ms'] / 1e3)} / {fmt_ms(t['first_call_ms'] / 1e3)} |"
            )
        out.append("")
    if seq_rows:
        out += [
            "## nn.Sequential grid unchanged",
            "",
            "The first points of the MLP grid of `benchmarks/run.py` (`hv.mlp`, tanh), timed "
            "here as run.py times them, against the same references (the diagonal's reference is "
            "torch.func jvp∘jvp there), next to the speedups in the committed "
            "[`cpu.md`](cpu.md) / `cpu.csv` (measured on another day: compare speedups, which "
            "are ratios taken within a round, rather than times).",
            "",
            "| point | op | hessviz auto | ran | reference | speedup now | committed speedup "
            "(auto time) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in seq_rows:
            old = (
                f"{fmt_x(r['committed_speedup'])} ({fmt_ms(r['committed_auto_ms'] / 1e3)})"
                if r["committed_speedup"] else "–"
            )  # fmt: skip
            out.append(
                f"| {r['point']} | {r['op']} | {fmt_ms(r['auto_ms'] / 1e3)} | {r['ran']} "
                f"| {r['reference']}: {fmt_ms(r['ref_ms'] / 1e3)} | **{fmt_x(r['speedup'])}** "
                f"| {old} |"
            )
        out.append("")
    path.write_text("\n".join(out))


# --------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="benchmarks/graph_models.py",
        description="hessviz (auto: graph engine) vs torch.func on user-style models: custom "
        "forward MLP and its nn.Sequential twin, residual MLP, LayerNorm MLP, ModuleList PINN "
        "with a hard boundary condition. Writes <out>/<tag>.md and .csv.",
    )
    ap.add_argument("--quick", action="store_true", help="one size per family, few rounds (< 30 s)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated: hessian,diagonal")
    ap.add_argument("--sizes", default=None, help="comma-separated input sizes n (default 2,10,64)")
    ap.add_argument("--out", default=str(HERE / "results"), help="output folder")
    ap.add_argument("--tag", default=None, help="file name stem (default graph; quick-graph)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per row")
    ap.add_argument("--budget", type=float, default=None, help="max seconds per callable/row")
    ap.add_argument(
        "--seq-grid",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="re-time a few points of run.py's nn.Sequential grid (default: on)",
    )
    args = ap.parse_args(argv)
    args.ops = [o for o in args.ops.split(",") if o]
    if set(args.ops) - set(OPS) or not args.ops:
        ap.error(f"--ops: choose from {', '.join(OPS)}")
    args.sizes = (
        tuple(int(s) for s in args.sizes.split(",")) if args.sizes
        else (QUICK_SIZES if args.quick else SIZES)
    )  # fmt: skip
    args.rounds = args.rounds or (5 if args.quick else 15)
    args.budget = args.budget or (0.25 if args.quick else 2.0)
    args.min_sample = 0.005 if args.quick else 0.02
    args.tag = args.tag or ("quick-graph" if args.quick else "graph")
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return args


def environment(args) -> dict:
    return {
        "machine": timing.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": " ".join([".venv/bin/python benchmarks/graph_models.py", *args.argv]).strip(),
        "quick": args.quick,
        "rounds": args.rounds,
        "code": code_version(),
    }


def prime() -> float:
    """Milliseconds of the first graph capture in this process (torch.fx / make_fx set-up),
    paid once per process, on a throwaway function; later first calls do not pay it."""
    import hessviz as hv

    X = torch.rand(4, 3, dtype=torch.float64)
    start = time.perf_counter()
    hv.hessian(lambda x: torch.tanh(x * 2.0).sum(-1, keepdim=True), X, batched=True)
    return (time.perf_counter() - start) * 1e3


def main(argv=None, command: str | None = None) -> int:
    """Run the suite; ``command`` is the command line shown in the results (run.py passes its
    ``./dev bench …``)."""
    args = parse_args(argv)
    peers.pin(args.threads)
    sync = timing.synchronizer("cpu")
    env = environment(args)
    env["command"] = command or env["command"]
    env["load_start"] = loadavg()
    env["prime_ms"] = prime()
    todo = cases(args.sizes)
    import run

    points = (run.GRID[:1] if args.quick else run.GRID[:SEQ_GRID_POINTS]) if args.seq_grid else []
    bar = timing.Progress(len(todo) + len(points))
    rows = []
    for case in todo:
        bar.update(f"graph models  {case.family} {case.label}")
        rows += time_case(case, args.ops, args, sync)
        bar.update(f"graph models  {case.family} {case.label}", step=1)
    seq_rows = []
    for cfg in points:
        bar.update(f"nn.Sequential grid  {cfg.label}")
        seq_rows += time_sequential_grid([cfg], args.ops, args, sync)
        bar.update(f"nn.Sequential grid  {cfg.label}", step=1)
    bar.close()
    env["load_end"] = loadavg()
    summary = summary_lines(rows, seq_rows, env)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{args.tag}.csv", rows)
    write_markdown(out / f"{args.tag}.md", rows, seq_rows, env, summary)
    print("\n".join(summary))
    print(f"results: {out / args.tag}.md, .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
