"""Shared fixtures: the test cases, fed to tests by id, and their float64 references.

References are computed lazily, once per test session and case id, not in every test's setup.
"""

import threading

import pytest
import torch
from cases import CASE_IDS, CASES, reference_hessian
from catalogue import cross_sample_max, full_hessian, per_sample_blocks


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request):
    return request.param


@pytest.fixture(scope="session")
def case_references() -> dict:
    """Case id → float64 reference Hessian (filled by :func:`problem` on first use)."""
    return {}


@pytest.fixture
def problem(case, case_references):
    """``(f, x, batched, H_ref)`` with the float64 reference Hessian."""
    f, x, batched = case.build()
    if case.id not in case_references:
        case_references[case.id] = reference_hessian(f, x, batched)
    return f, x, batched, case_references[case.id].clone()


class CatalogueReferences:
    """The float64 references of ``tests/catalogue.py``, computed on first use of each case."""

    def __init__(self):
        self._full: dict[str, tuple[torch.Tensor, torch.Tensor, bool]] = {}
        self._layout: dict[str, torch.Tensor] = {}

    def full(self, case) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(H_full, x, batched)``: the Hessian of ``f`` at the whole float64 input."""
        if case.id not in self._full:
            f, x, batched = case.build(torch.float64)
            self._full[case.id] = (full_hessian(f, x), x, batched)
        return self._full[case.id]

    def hessian(self, case) -> torch.Tensor:
        """The reference in hessviz's layout (batched: per-sample blocks with a leading ``B``)."""
        if case.id not in self._layout:
            H, x, batched = self.full(case)
            self._layout[case.id] = per_sample_blocks(H, x) if batched else H
        return self._layout[case.id].clone()

    def cross_sample_max(self, case) -> float:
        H, x, batched = self.full(case)
        return cross_sample_max(H, x) if batched else 0.0


@pytest.fixture(scope="session")
def catalogue_reference() -> CatalogueReferences:
    return CatalogueReferences()


@pytest.fixture(autouse=True)
def _fixed_threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _no_kernel_races(monkeypatch):
    """A plain call's first call races numpy's chain kernels against PyTorch's
    (``structured.chain_numpy._wins_race``): a timing a test must not depend on. Here numpy's
    never win a race; the tests of those kernels force it won (``tests/test_numpy_*.py``)."""
    from hessviz.structured import chain_numpy

    monkeypatch.setattr(chain_numpy, "_wins_race", lambda numpy_call, torch_call: False)


@pytest.fixture
def plain_hvp_on_torch(monkeypatch):
    """Plain HVPs keep the PyTorch chain kernel: whether numpy's (``structured.chain_numpy``)
    takes over also depends on a timing probe of this machine's BLAS, which a test must not
    (the race is off in every test: ``_no_kernel_races``)."""
    from hessviz.structured import chain_numpy

    monkeypatch.setattr(chain_numpy, "_numpy_blas_is_faster", lambda dtype: False)


@pytest.fixture
def in_threads():
    """``run(call, inputs, rounds=20)``: each of ``inputs`` (argument tuples) in its own thread,
    ``call(*args)`` ``rounds`` times there, all threads at once; the last results, in order."""

    def run(call, inputs, rounds: int = 20) -> list:
        got = [None] * len(inputs)

        def work(i):
            for _ in range(rounds):
                got[i] = call(*inputs[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return got

    return run
