"""The benchmark's tools: the GEMM-share yardstick (``benchmarks/gemm_share.py``) sees every
matrix product a call issues, with its shape, and replays exactly those; its bound for the
one-pass ceiling runs them with one pass between products and none after the last;
``peers.pin`` puts every
thread of the process on the pinned cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gemm_share  # noqa: E402


def test_record_sees_every_product_with_its_shape():
    A, W = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    S, T = torch.randn(2, 5, 3), torch.randn(2, 3, 6)
    acc = torch.zeros(2, 5, 6)

    def call():
        torch.nn.functional.linear(A, W, torch.ones(4, dtype=torch.float64))  # addmm
        torch.nn.functional.linear(A, W)  # mm
        acc.baddbmm_(S, T)
        torch.matmul(S, T)  # bmm
        return A * 2  # not a product

    gemms = gemm_share.record(call)
    got = [(p.batch, p.M, p.K, p.N, p.dtype) for p in gemms]
    assert got == [
        (1, 5, 3, 4, torch.float64),
        (1, 5, 3, 4, torch.float64),
        (2, 5, 3, 6, torch.float32),
        (2, 5, 3, 6, torch.float32),
    ]
    assert gemm_share.flops(gemms) == 2 * (2 * 5 * 3 * 4 + 2 * 2 * 5 * 3 * 6)


def test_replay_runs_exactly_the_recorded_products():
    gemms = [gemm_share.Gemm(1, 7, 4, 3, torch.float64), gemm_share.Gemm(3, 2, 5, 6, torch.float32)]
    assert gemm_share.record(gemm_share.replay(gemms)) == gemms


def test_the_bound_replays_then_passes_once_over_each_products_smaller_operand_but_the_last():
    gemms = [
        gemm_share.Gemm(1, 7, 4, 3, torch.float64),  # output (7, 3) is the smaller
        gemm_share.Gemm(3, 2, 5, 6, torch.float32),  # left factor (3, 2, 5)
        gemm_share.Gemm(1, 9, 9, 9, torch.float64),  # the last: nothing after it
    ]
    assert gemm_share.pass_sizes(gemms) == [21, 30]
    seen = []

    class Spy(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.mul_:
                seen.append((args[0].numel(), args[0].dtype))
            return func(*args, **(kwargs or {}))

    run = gemm_share.bound(gemms)
    assert gemm_share.record(run) == gemms  # the products, exactly
    with Spy():
        run()
    assert seen == [(21, torch.float64), (30, torch.float32)]


def test_xla_replay_computes_every_recorded_product():
    """XLA's replay returns one result per product, equal to that product of its operands."""
    pytest.importorskip("jax")
    import jax

    gemms = [
        gemm_share.Gemm(1, 5, 3, 4, torch.float32),
        gemm_share.Gemm(2, 6, 5, 2, torch.float32),
    ]
    results = gemm_share.replay_xla(gemms, jax.devices("cpu")[0])()
    g = torch.Generator().manual_seed(0)
    assert len(results) == len(gemms)
    for p, got in zip(gemms, results):
        lead = (p.batch,) if p.batch > 1 else ()
        A = torch.rand(*lead, p.M, p.K, generator=g, dtype=p.dtype)
        B = torch.rand(*lead, p.K, p.N, generator=g, dtype=p.dtype)
        torch.testing.assert_close(torch.from_numpy(jax.device_get(got).copy()), A @ B)


_PIN_CHILD = """
import os, sys, threading, time
sys.path.insert(0, sys.argv[1])
started = threading.Event()
ids = []
def pool_thread():  # like a BLAS pool started when its library is imported: before pin()
    ids.append(threading.get_native_id()); started.set(); time.sleep(5)
threading.Thread(target=pool_thread, daemon=True).start()
started.wait()
import peers
peers.pin(1)
late = []
t = threading.Thread(target=lambda: late.append(os.sched_getaffinity(0)))
t.start(); t.join()
import json
cores = [os.sched_getaffinity(ids[0]), os.sched_getaffinity(0), late[0]]
print(json.dumps([sorted(c) for c in cores]))
"""


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs two cores and Linux affinity",
)
def test_pin_moves_threads_that_were_already_running():
    """``sched_setaffinity(0)`` moves only the calling thread: a pool started at import kept
    computing on the other core. After ``pin(1)`` the early thread, the caller and a thread
    started later all run on the first allowed core, and nowhere else."""
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    out = subprocess.run(
        [sys.executable, "-c", _PIN_CHILD, bench], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    early, caller, later = json.loads(out.stdout)
    assert early == caller == later == [min(os.sched_getaffinity(0))]
