"""Shared fixtures: the test cases, fed to tests by id."""

import pytest
import torch
from cases import CASE_IDS, CASES, reference_hessian


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request):
    return request.param


@pytest.fixture
def problem(case):
    """``(f, x, batched, H_ref)`` with the float64 reference Hessian."""
    f, x, batched = case.build()
    return f, x, batched, reference_hessian(f, x, batched)


@pytest.fixture(autouse=True)
def _fixed_threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))
