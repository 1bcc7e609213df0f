"""The benchmark's GEMM-share yardstick (``benchmarks/gemm_share.py``) sees every matrix
product a call issues, with its shape, and replays exactly those."""

from __future__ import annotations

import sys
from pathlib import Path

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
