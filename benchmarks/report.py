"""Summary lines, the markdown table, the CSV and the plotly figure of a benchmark run."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import peers

TITLES = {
    "hessian": "Full Hessian — hv.hessian",
    "diagonal": "Exact diagonal — hv.hessian_diagonal",
    "laplacian": "Laplacian — hv.laplacian",
    "hvp": "Hessian-vector products — hv.hvp",
}
LATENCY_TARGET_MS = 5.0  # "a few milliseconds, not tens"


def _geo_mean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def _base(method: str) -> str:
    """``"hessviz auto (structured)"`` → ``"hessviz auto"``."""
    return method.split(" (")[0] if method.startswith("hessviz auto") else method


def _point(r: dict) -> tuple:
    return (r["n"], r["width"], r["m"], r["layers"], r["batch"])


def _row(rows, task: str, method: str, point: tuple) -> dict | None:
    return next(
        (
            r
            for r in rows
            if r["task"] == task and _base(r["method"]) == method and _point(r) == point
        ),
        None,
    )


def _ratio(slow: dict, fast: dict) -> float:
    """``time(slow) / time(fast)``: median of per-round ratios when both share >= 3 rounds."""
    pairs = list(zip(slow["_samples"], fast["_samples"]))
    if len(pairs) >= 3:
        return statistics.median(a / b for a, b in pairs)
    return slow["median_ms"] / fast["median_ms"]


def _ratios(rows, task: str, slow: str, fast: str = "hessviz auto", min_n: int = 0):
    """``time(slow) / time(fast)`` per grid point where both were timed (and ``n ≥ min_n``)."""
    out = {}
    for p in sorted({_point(r) for r in rows if r["task"] == task}):
        a, b = _row(rows, task, slow, p), _row(rows, task, fast, p)
        if a and b and a["median_ms"] and b["median_ms"] and p[0] >= min_n:
            out[p] = _ratio(a, b)
    return out


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _fmt_x(x: float) -> str:
    return f"{x:.1f}x" if x < 100 else f"{x:.0f}x"


def summary_lines(rows: list[dict], latency: list[dict], env: dict) -> list[str]:
    """The headline speedups of ``method="auto"``, one line per target, with PASS/FAIL."""
    tasks = {r["task"] for r in rows}
    points = sorted({_point(r) for r in rows})
    grid = "quick grid: the targets are defined on the full grid" if env["quick"] else "full grid"
    lines = [
        f"hessviz benchmark — {env['device']}, float64, tanh MLPs, batched, {grid} "
        f"({len(points)} points), {env['threads']} thread(s), torch {env['torch']}"
        + (f", JAX {env['jax']}" if env["jax"] else f" (JAX: {env['jax_note']})")
    ]
    if "hessian" in tasks:
        r = _ratios(rows, "hessian", peers.REFERENCE["hessian"])
        g, lo = _geo_mean(list(r.values())), min(r.values())
        lines.append(
            f"  hessian   auto vs vmap(torch.func.hessian): geo-mean {_fmt_x(g)}, "
            f"min {_fmt_x(lo)}  (target >= 1.5x, min >= 0.8x)  {_verdict(g >= 1.5 and lo >= 0.8)}"
        )
        r = _ratios(rows, "hessian", "seed loop")
        rl = _ratios(rows, "hessian", "hessviz loop")
        loop_part = (
            f"; vs hessviz loop (batch-summed): min {_fmt_x(min(rl.values()))}" if rl else ""
        )
        if r:
            lo = min(r.values())
            lines.append(
                f"  hessian   auto vs seed loop (per sample, as in the threads): min {_fmt_x(lo)} "
                f"over {len(r)} timed point(s) (target >= 50x){loop_part}  {_verdict(lo >= 50)}"
            )
        else:
            lines.append(f"  hessian   auto vs seed loop: not timed (skipped){loop_part}")
    for task, full in (
        ("diagonal", "torch.func full→diag"),
        ("laplacian", "torch.func full→trace"),
    ):
        if task not in tasks:
            continue
        r = _ratios(rows, task, peers.REFERENCE[task])
        g = _geo_mean(list(r.values()))
        rf = _ratios(rows, task, full, min_n=64)
        lo = min(rf.values()) if rf else float("nan")
        ok = g >= 5 and (not rf or lo >= 10)
        full_part = (
            f"; vs {full.split()[-1]} at n>=64: min {_fmt_x(lo)} (>= 10x)"
            if rf
            else "; no n>=64 point"
        )
        lines.append(
            f"  {task:9s} auto vs torch.func jvp∘jvp: geo-mean {_fmt_x(g)} (>= 5x)"
            f"{full_part}  {_verdict(ok)}"
        )
    if "hvp" in tasks:
        r = _ratios(rows, "hvp", peers.REFERENCE["hvp"])
        g, lo = _geo_mean(list(r.values())), min(r.values())
        lines.append(
            f"  hvp       auto vs torch.func jvp(jacrev) vmapped: geo-mean {_fmt_x(g)}, "
            f"min {_fmt_x(lo)}  (target >= 1x everywhere)  {_verdict(lo >= 1.0)}"
        )
    if latency:
        worst = max((r for r in latency if r["call"] == "all three"), key=lambda r: r["median_ms"])
        lines.append(
            f"  latency   batch 1, n<=8, width<=64: hessian + diagonal + FD in at most "
            f"{worst['median_ms']:.2f} ms ({worst['model']})  (target <= {LATENCY_TARGET_MS:g} ms)"
            f"  {_verdict(worst['median_ms'] <= LATENCY_TARGET_MS)}"
        )
    if env["jax"]:
        parts = []
        for task in peers.TASKS:
            r = _ratios(rows, task, peers.JAX_LABELS[task])
            if r:
                parts.append(f"{task} {_fmt_x(_geo_mean(list(r.values())))}")
        lines.append("  vs JAX jit (geo-mean speedup of auto, no target): " + ", ".join(parts))
        lines += _jax_targets(rows, tasks)
    lines += _gemm_share_line(rows)
    bad = [r for r in rows if "MISMATCH" in (r["note"] or "")]
    lines.append(
        "  exactness: every timed result agrees with torch.func to 1e-8 (relative)  PASS"
        if not bad
        else f"  exactness: {len(bad)} result(s) disagree with torch.func  FAIL"
    )
    return lines


#: issue 13's targets against JAX jit, on hv.compile: (task, smallest n, largest n, target)
JAX_TARGETS = (("hessian", 64, None, 1.5), ("hessian", 10, 10, 1.0), ("diagonal", 64, None, 1.0),
               ("hvp", 0, None, 0.8))  # fmt: skip


def _jax_targets(rows, tasks) -> list[str]:
    """One line per target of issue 13 against JAX jit, judged on hv.compile (the opt-in
    handle; plain auto's geo-means are the line above)."""
    out = []
    for task, lo_n, hi_n, target in JAX_TARGETS:
        if task not in tasks:
            continue
        r = {
            p: x
            for p, x in _ratios(rows, task, peers.JAX_LABELS[task], "hv.compile", lo_n).items()
            if hi_n is None or p[0] <= hi_n
        }
        where = f"n = {lo_n}" if hi_n == lo_n else f"n >= {lo_n}" if lo_n else "every n"
        if not r:
            out.append(f"  {task:9s} hv.compile vs JAX jit, {where}: not timed")
            continue
        lo = min(r.values())
        cells = ", ".join(f"n={p[0]} {_fmt_x(x)}" for p, x in r.items())
        out.append(  # the minimum to two decimals: 0.77x must not read as the 0.8x target
            f"  {task:9s} hv.compile vs JAX jit, {where}: min {lo:.2f}x ({cells})  "
            f"(target >= {target}x)  {_verdict(lo >= target)}"
        )
    return out


GEMM_SHARE_TARGET = 0.85


def _gemm_rows(rows) -> list[dict]:
    return [r for r in rows if r.get("gemm_share") is not None]


def _gemm_share_line(rows) -> list[str]:
    """Issue 13's GEMM-rate target on the large points: plain auto's time that is GEMM at
    torch's own rate (``gemm_share.py``), every task."""
    gemm = _gemm_rows(rows)
    if not gemm:
        return []
    lo = min(gemm, key=lambda r: r["gemm_share"])
    lines = [
        f"  GEMM rate auto, n >= 64, every task: min {lo['gemm_share']:.0%} of torch's own mm "
        f"rate on the same products ({lo['task']} n={lo['n']})  (target >= "
        f"{GEMM_SHARE_TARGET:.0%})  {_verdict(lo['gemm_share'] >= GEMM_SHARE_TARGET)}"
    ]
    ceilings = [r for r in gemm if r.get("gemm_ceiling") is not None]
    below = [r for r in ceilings if r["gemm_ceiling"] < GEMM_SHARE_TARGET]
    if ceilings:
        where = ", ".join(f"{r['task']} n={r['n']} {r['gemm_ceiling']:.0%}" for r in below)
        lines.append(
            f"    one-pass ceiling (the products and one pass between them, nothing else) below "
            f"{GEMM_SHARE_TARGET:.0%} at {len(below)} of {len(ceilings)} points"
            + (f": {where}" if below else "")
        )
    return lines


def _gemm_share_table(rows) -> list[str]:
    xla = any(r.get("xla_gflops") is not None for r in _gemm_rows(rows))
    out = [
        "| task | point | GEMM GFLOP | hessviz GFLOP/s | torch mm GFLOP/s, same products | share "
        "| one-pass ceiling | numpy GFLOP/s, same products |"
        + (" XLA GFLOP/s, same products |" if xla else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if xla else ""),
    ]
    for r in _gemm_rows(rows):
        cell = "–" if r.get("xla_gflops") is None else f"{r['xla_gflops']:.1f}"
        numpy = "–" if r.get("np_gflops") is None else f"{r['np_gflops']:.1f}"
        ceiling = "–" if r.get("gemm_ceiling") is None else f"{r['gemm_ceiling']:.0%}"
        out.append(
            f"| {r['task']} | n={r['n']} w={r['width']} m={r['m']} L={r['layers']} "
            f"B={r['batch']} | {r['gemm_gflop']:.3f} | {r['hv_gflops']:.1f} | "
            f"{r['mm_gflops']:.1f} | {r['gemm_share']:.0%} | {ceiling} | {numpy} |"
            + (f" {cell} |" if xla else "")
        )
    return out


# --------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = [k for k in rows[0] if not k.startswith("_")]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def _ms(x: float) -> str:
    if x >= 100:
        return f"{x:.0f} ms"
    if x >= 10:
        return f"{x:.1f} ms"
    return f"{x:.2f} ms" if x >= 0.1 else f"{x * 1e3:.0f} µs"


def _label(cfg: dict) -> str:
    return f"n={cfg['n']}<br>w={cfg['width']} m={cfg['m']}<br>L={cfg['layers']} B={cfg['batch']}"


def _method_order(rows, task) -> list[str]:
    seen = []
    for r in rows:
        if r["task"] == task and _base(r["method"]) not in seen:
            seen.append(_base(r["method"]))
    return seen


def _table(rows, task, grid, cell) -> list[str]:
    head = "| method | " + " | ".join(_label(c) for c in grid) + " |"
    out = [head, "|---" * (len(grid) + 1) + "|"]
    for method in _method_order(rows, task):
        cells = []
        for c in grid:
            r = _row(rows, task, method, tuple(c.values()))
            cells.append("" if r is None else cell(r))
        name = f"**{method}**" if method == "hessviz auto" else method
        name += " *ref*" if method == peers.REFERENCE[task] else ""
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def _time_cell(r: dict) -> str:
    if r["median_ms"] is None:
        return r["note"] or "–"
    s = f"{_ms(r['median_ms'])} · {_fmt_x(r['speedup_vs_ref'])}"
    if r["method"].startswith("hessviz auto ("):
        s += f" ({r['method'].split('(')[1].rstrip(')')})"
    if "MISMATCH" in (r["note"] or ""):
        s += " ⚠ " + r["note"]
    return s


def _mem_cell(r: dict) -> str:
    if r["peak_mib"] is None:
        return "–"
    return f"{r['peak_mib']:.1f}" if r["peak_mib"] < 100 else f"{r['peak_mib']:.0f}"


def write_markdown(path, rows, latency, env, summary, grid) -> None:
    threads = f"{env['threads']} thread" + ("s" if env["threads"] != 1 else "")
    jax = f"JAX {env['jax']} (XLA, jit)" if env["jax"] else f"JAX: {env['jax_note']}"
    lines = [
        f"# hessviz benchmark — {env['device']}",
        "",
        f"- Machine: {env['machine']}. All rows measured there, in one process.",
        f"- torch {env['torch']} ({threads}), {jax}, Python {env['python']}; {env['date']}.",
        f"- Command: `{env['command'].strip()}`.",
        f"- hessviz's matrix products ({'`hessviz._gemm`'}): {env.get('gemm', '?')}.",
        "- Problems: float64 tanh MLPs `hv.mlp([n] + [w] * L + [m])`, batched inputs `(B, n)`; "
        "columns give n, hidden width w, outputs m, hidden layers L, batch B.",
        f"- Each cell: median time per call over up to {env['rounds']} interleaved timed rounds "
        "after a warm-up (method order rotates every round), then the speedup `t(ref) / t(method)`"
        " over the torch.func reference of the task (the row marked *ref*): above 1x is faster. "
        "`hessviz auto` also names the method auto picked.",
        "- Every result was checked against torch.func before timing (relative error < 1e-8).",
        "",
        "## Summary",
        "",
        "```",
        *summary,
        "```",
    ]
    for task in peers.TASKS:
        if not any(r["task"] == task for r in rows):
            continue
        lines += ["", f"## {TITLES[task]}", "", f"Reference (*ref*): {peers.REFERENCE[task]}.", ""]
        lines += _table(rows, task, grid, _time_cell)
    if _gemm_rows(rows):
        lines += [
            "",
            "## GEMM share (hessviz auto, n >= 64)",
            "",
            "Every matrix product one call issues (recorded with a dispatch mode), replayed alone "
            "with `torch.mm`/`torch.bmm` on contiguous operands and timed interleaved with the "
            "call (`benchmarks/gemm_share.py`): *share* = t(replay) / t(call), the part of the "
            "call that is GEMM at torch's own rate (above 100%: the call's products ran faster "
            "than the contiguous replay). *one-pass ceiling*: the replay against the replay "
            "plus one in-place pass over each product's smaller operand between products "
            "(`gemm_share.bound`): the share of a call doing only its products and the least "
            "elementwise work between them; a share above it needs that work fused into the "
            "GEMMs. The rates count the same GEMM FLOPs over the call's and "
            "the replay's median time in those rounds. *numpy*: the same products in "
            "`np.matmul` (numpy's BLAS; hessviz hands its products there where that measured "
            "faster, `hessviz/_gemm.py`, so its share can pass 100%). *XLA*: the same products "
            "under one "
            "`jax.jit` (`jnp.matmul`, same core), timed in those rounds: where it is above "
            "torch's rate, JAX runs the same FLOPs that much faster on the BLAS alone.",
            "",
            *_gemm_share_table(rows),
        ]
    if any(r["peak_mib"] is not None for r in rows):
        lines += [
            "",
            "## Peak memory (MiB)",
            "",
            "Resident-memory growth during one call after warm-up (`VmHWM − VmRSS`, high-water "
            "mark reset just before the call, free heap pages trimmed), in a child process per "
            "grid point with glibc's mmap threshold pinned, so buffers freed earlier are not "
            "reused unseen. It includes the result and every temporary (PyTorch, BLAS, XLA "
            "buffers), at page resolution: sub-MiB rows read 0.0. On CUDA: growth of "
            "`torch.cuda.max_memory_allocated`. '–': not measured.",
        ]
        for task in peers.TASKS:
            if any(r["task"] == task for r in rows):
                lines += ["", f"### {TITLES[task]}", ""] + _table(rows, task, grid, _mem_cell)
    else:
        lines += ["", "## Peak memory", "", "Not measured in this run (`--no-memory`/`--quick`)."]
    if latency:
        lines += [
            "",
            "## Small-model latency (batch 1)",
            "",
            "One unbatched point `x` of shape `(n,)`, what the explorer computes on every change. "
            "'all three' runs hv.hessian, hv.hessian_diagonal and hv.fd_hessian in a row.",
            "",
            "| model | call | median | IQR |",
            "|---|---|---|---|",
        ]
        for r in latency:
            lines.append(
                f"| {r['model']} | {r['call']} | {_ms(r['median_ms'])} | "
                f"{_ms(r['q1_ms'])} – {_ms(r['q3_ms'])} |"
            )
    notes = sorted({r["note"] for r in rows if r["note"] and "MISMATCH" not in r["note"]})
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in notes] or ["- Nothing was skipped."]
    if not env["jax"]:
        lines.append(f"- JAX peers not run: {env['jax_note']}.")
    Path(path).write_text("\n".join(lines) + "\n")


def _shape(r: dict) -> str:
    return f"w={r['width']} m={r['m']} L={r['layers']} B={r['batch']}"


def write_figure(path: Path, rows: list[dict], env: dict) -> str:
    """Time vs n (log-log), one panel per task, one line per method. Returns a note."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        return " (figure skipped: plotly not installed)"
    tasks = [t for t in peers.TASKS if any(r["task"] == t for r in rows)]
    fig = make_subplots(
        rows=(len(tasks) + 1) // 2,
        cols=2 if len(tasks) > 1 else 1,
        subplot_titles=[TITLES[t] for t in tasks],
        horizontal_spacing=0.08,
        vertical_spacing=0.12,
    )
    methods = []
    for t in tasks:
        methods += [m for m in _method_order(rows, t) if m not in methods]
    palette = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
        "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939",
    ]  # fmt: skip
    color = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    shown = set()
    for k, t in enumerate(tasks):
        for method in _method_order(rows, t):
            pts = sorted(
                (
                    r
                    for r in rows
                    if r["task"] == t and _base(r["method"]) == method and r["median_ms"]
                ),
                key=lambda r: r["n"],
            )
            if not pts:
                continue
            is_hv = method.startswith("hessviz")
            fig.add_trace(
                go.Scatter(
                    x=[r["n"] for r in pts],
                    y=[r["median_ms"] for r in pts],
                    mode="lines+markers",
                    name=method,
                    legendgroup=method,
                    showlegend=method not in shown,
                    line={
                        "color": color[method],
                        "dash": "solid" if is_hv else "dash",
                        "width": 3 if method == "hessviz auto" else 1.5,
                    },
                    customdata=[
                        [
                            f"w={r['width']} m={r['m']} L={r['layers']} B={r['batch']}",
                            r["speedup_vs_ref"],
                        ]
                        for r in pts
                    ],
                    hovertemplate="%{fullData.name}<br>n=%{x} %{customdata[0]}<br>%{y:.3g} ms"
                    "<br>%{customdata[1]:.2f}x vs torch.func<extra></extra>",
                ),
                row=k // 2 + 1,
                col=k % 2 + 1,
            )
            shown.add(method)
    fig.update_xaxes(type="log", title_text="n (inputs)")
    fig.update_yaxes(type="log", title_text="ms per call")
    fig.update_layout(
        title=f"hessviz vs peers — {env['device']}, float64, {env['threads']} thread(s), "
        f"median time per batched call (solid: hessviz, dashed: peers)",
        height=420 * ((len(tasks) + 1) // 2),
        width=1200,
        template="plotly_white",
    )
    fig.write_html(path, include_plotlyjs="cdn", full_html=True)
    return ""
