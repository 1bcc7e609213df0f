"""A narrowing first layer's Laplacian: the chain kernel on ``K_1`` rows against the general kernel.

Run ``.venv/bin/python benchmarks/stem_rows.py`` (about two minutes). Writes
``<out>/stem_rows.md``.

For ``f = g(W_1 x + b_1)`` the Laplacian needs the first layer only through ``W_1 W_1ᵀ``. When
the first layer is narrower than the input (``K_1 < n``, e.g. ``Linear(784, 256)``), a chain of
Linear layers and activations runs its forward Laplacian on the ``K_1`` rows of ``R``
(``W_1ᵀ = QR``, kept with the stem map, :func:`hessviz.structured.kernels.laplacian_stem`)
instead of the ``n`` rows of ``W_1ᵀ``. Before, such chains went to the general kernels, which
carry Jacobians in ``z_1`` and apply the stem's Gram ``PᵀP`` per sample. Both are timed here
in one process, on one model and input, in alternating rounds (each round repeats a call for
at least 30 ms), after both agreed on the result; the ratio is the median of the rounds'
ratios. The points: the benchmark grid's Laplacians with ``n > K_1``, the PINN grid's
``d = 100``, width-64 points, and two small ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

POINTS = [  # (n, width, outputs, hidden layers, batch, dtype)
    (256, 128, 10, 3, 8, "float64"),
    (784, 256, 10, 2, 2, "float64"),
    (784, 256, 10, 2, 2, "float32"),
    (100, 64, 1, 4, 1024, "float64"),
    (100, 64, 1, 4, 1024, "float32"),
    (256, 128, 10, 3, 64, "float64"),
    (784, 128, 1, 2, 1, "float64"),
    (20, 8, 1, 3, 512, "float64"),
]
ROUNDS = 15


def measure(n, width, m, layers, batch, dtype) -> dict:
    """Median times (ms) of the general kernel and the chain kernel on one point, and the median
    of their per-round ratios."""
    import torch

    import hessviz as hv
    from hessviz import structured
    from hessviz._problem import prepare
    from hessviz.structured import kernels

    dt = getattr(torch, dtype)
    model = hv.mlp([n] + [width] * layers + [m], "tanh", seed=0).to(dt)
    X = torch.randn(batch, n, dtype=dt, generator=torch.Generator().manual_seed(1))
    p, _ = prepare("laplacian", model, X, batched=True, outputs=None)
    layers_ = structured.parse(model)
    chain_of = kernels._chain
    ch = chain_of(layers_, p, "laplacian")
    assert ch is not None and kernels.laplacian_stem(ch, X) is not None
    new = kernels.ChainRunner(ch, "laplacian")
    general = kernels.Runner("laplacian", layers_)

    def old():  # the general kernel, as every narrowing chain ran before (no chain found)
        kernels._chain = lambda *args: None
        try:
            return general(p, X, p.sel)
        finally:
            kernels._chain = chain_of

    def fresh():
        return new(p, X, p.sel)

    with torch.no_grad():
        a, b = old(), fresh()
        tol = 1e-10 if dt == torch.float64 else 1e-4
        assert float((a - b).abs().max()) <= tol * float(a.abs().max()), "the kernels disagree"
        start = time.perf_counter()
        old()
        reps = max(1, int(0.03 / (time.perf_counter() - start)))
        times = {"old": [], "new": []}
        for _ in range(ROUNDS):
            for name, fn in (("old", old), ("new", fresh)):
                start = time.perf_counter()
                for _ in range(reps):
                    fn()
                times[name].append((time.perf_counter() - start) / reps)
    ratios = sorted(o / f for o, f in zip(times["old"], times["new"]))
    med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
    return {"old_ms": med["old"], "new_ms": med["new"], "ratio": ratios[len(ratios) // 2]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    import torch

    import hessviz

    torch.set_num_threads(1)
    lines = [
        "# A narrowing first layer's Laplacian: chain kernel on K₁ rows vs the general kernel",
        "",
        f"`.venv/bin/python benchmarks/stem_rows.py` — hessviz {hessviz.__version__}, torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, "
        f"{ROUNDS} alternating rounds per point in one process (see the script's docstring).",
        "",
        "| n | width | outputs | hidden layers | batch | dtype | general kernel (`PᵀP`), ms "
        "| chain on K₁ rows, ms | speed-up (median of round ratios) |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for point in POINTS:
        r = measure(*point)
        row = " | ".join(map(str, point))
        lines.append(f"| {row} | {r['old_ms']:.3g} | {r['new_ms']:.3g} | {r['ratio']:.2f}x |")
        print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stem_rows.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'stem_rows.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
