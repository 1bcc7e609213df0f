"""A plan keeps its kernel's temporaries between calls (:class:`hessviz._memory.Workspace`).

The buffers are reused by every later call of the plan, so these tests look for what reuse could
break: a result that lives in a kept buffer (the next call would overwrite it), a later call
reading the previous call's numbers, two threads in one plan at once, activations whose
closed forms write into the buffers against the module's own numbers, and a plan that keeps
more than its budget allows.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import hessviz as hv
from hessviz import _hot, ops
from hessviz.structured import kernels

D = torch.float64
CALLS = {
    "hessian": lambda f, X, V, **kw: hv.hessian(f, X, batched=True, **kw),
    "diagonal": lambda f, X, V, **kw: hv.hessian_diagonal(f, X, batched=True, **kw),
    "laplacian": lambda f, X, V, **kw: hv.laplacian(f, X, batched=True, **kw),
    "hvp": lambda f, X, V, **kw: hv.hvp(f, X, V, batched=True, **kw),
}


def _model(act: str, bias: bool = True, sizes=(3, 7, 5, 2)) -> nn.Module:
    torch.manual_seed(len(act))
    layers = []
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if k < len(sizes) - 2:
            layers.append(ops.ACTIVATIONS[act].module())
    return nn.Sequential(*layers).double()


def _data(seed: int, B: int = 6, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, n, dtype=D, generator=g), torch.randn(B, n, dtype=D, generator=g)


def _runner(model, X, op):
    key = _hot.request_key(op, "auto", X, True, None)
    entry = _hot.find(model, key)
    assert entry is not None and isinstance(entry.kernel, kernels.ChainRunner)
    return entry.kernel


@pytest.mark.parametrize("op", list(CALLS))
@pytest.mark.parametrize("act", ["tanh", "sigmoid", "sin", "softplus", "silu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_repeated_calls_on_new_data_are_exact_and_results_stay_the_callers(
    op, act, bias, plain_hvp_on_torch
):
    model = _model(act, bias)
    first, kept = None, None
    for seed in range(4):  # the plan, then three calls it serves
        X, V = _data(seed)
        got = CALLS[op](model, X, V)
        torch.testing.assert_close(got, CALLS[op](model, X, V, method="func"))
        if seed == 1:
            first, kept = got, got.clone()
    assert _runner(model, X, op).workspace._bufs  # the plan kept its temporaries
    torch.testing.assert_close(first, kept, rtol=0, atol=0)  # later calls left it alone


def _general_models():
    """Models the general kernels run (Jacobians carried per layer, :class:`kernels.Runner`):
    a first layer narrower than the input (carried in ``z_1``, the stem's Gram), deeper
    ones, and a convolution."""
    torch.manual_seed(3)
    narrow = _model("tanh", sizes=(12, 4, 5, 2))
    deeper = _model("sigmoid", sizes=(12, 3, 6, 5, 2))
    conv = nn.Sequential(
        nn.Unflatten(1, (1, 12)),
        nn.Conv1d(1, 2, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(20, 6),
        nn.Tanh(),
        nn.Linear(6, 2),
    ).double()
    return {"narrow": narrow, "deeper": deeper, "conv": conv}


@pytest.mark.parametrize("op", list(CALLS))
@pytest.mark.parametrize("name", ["narrow", "deeper", "conv"])
def test_general_kernels_keep_their_jacobians_and_stay_exact(op, name):
    model = _general_models()[name]
    results = []
    for seed in range(4):
        X, V = _data(seed, n=12)
        got = CALLS[op](model, X, V)
        torch.testing.assert_close(got, CALLS[op](model, X, V, method="func"))
        results.append((got, got.clone()))
    entry = _hot.find(model, _hot.request_key(op, "auto", X, True, None))
    if op in ("hvp", "laplacian") and name != "conv":
        # an MLP's HVPs (no Jacobians) and Laplacians (a narrowing first layer's K_1 rows) go to
        # the chain kernel
        assert isinstance(entry.kernel, kernels.ChainRunner)
    else:
        assert isinstance(entry.kernel, kernels.Runner)
        if op != "hvp":
            assert entry.kernel.workspace._bufs
    for got, kept in results:  # no result lives in a kept buffer
        torch.testing.assert_close(got, kept, rtol=0, atol=0)


def test_closed_forms_written_into_buffers_equal_the_module_and_the_catalogue():
    z = torch.linspace(-6, 6, 101, dtype=D)
    for name in ops.DERIVATIVES_INTO:
        module = ops.ACTIVATIONS[name].module()
        bufs = [torch.full_like(z, float("nan")) for _ in range(3)]
        a, s1, s2 = ops.DERIVATIVES_INTO[name](z, *bufs)
        assert all(t.data_ptr() == b.data_ptr() for t, b in zip((a, s1, s2), bufs))
        assert torch.equal(a, module(z))  # the value is the module's own, bit for bit
        e1, e2 = ops.DERIVATIVES[name](z, module(z))
        torch.testing.assert_close(s1, e1, rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(s2, e2, rtol=1e-15, atol=1e-15)


def test_a_subclass_of_an_activation_does_not_get_the_op_written_into_buffers():
    class Steeper(nn.Tanh):
        def forward(self, z):
            return torch.tanh(2 * z)

    from hessviz.structured.layers import derivatives_into

    assert derivatives_into(nn.Tanh()) is ops.DERIVATIVES_INTO["tanh"]
    assert derivatives_into(Steeper()) is None


@pytest.mark.parametrize("op", ["laplacian", "hvp", "diagonal"])
def test_two_threads_in_one_plan_get_their_own_answers(op, plain_hvp_on_torch):
    """While one call holds the plan's workspace, a second gets fresh buffers."""
    model = _model("tanh", sizes=(3, 64, 64, 2))
    X0, V0 = _data(0, B=256)
    CALLS[op](model, X0, V0)  # the plan
    data = [_data(seed, B=256) for seed in range(1, 5)]
    want = [CALLS[op](model, X, V, method="func") for X, V in data]
    got = [[None] * len(data) for _ in range(2)]

    def work(i):
        for _ in range(5):
            for j, (X, V) in enumerate(data):
                got[i][j] = CALLS[op](model, X, V)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        for j in range(len(data)):
            torch.testing.assert_close(got[i][j], want[j])


def test_a_busy_workspace_hands_out_fresh_buffers_and_a_plan_keeps_within_its_budget():
    model = _model("tanh")
    X, V = _data(0)
    for _ in range(2):  # the plan, then a call it serves
        hv.laplacian(model, X, batched=True)
    ws = _runner(model, X, "laplacian").workspace
    assert ws._bufs
    assert ws.acquire()
    try:  # the plan is busy: this call must not touch its buffers
        # compared as bytes: a buffer's unwritten tail is whatever the allocator left, NaN too
        before = {k: t.view(torch.uint8).clone() for k, t in ws._bufs.items()}
        other = _data(1)[0]  # same request, new numbers: writes into the buffers would show
        torch.testing.assert_close(
            hv.laplacian(model, other, batched=True),
            hv.laplacian(model, other, batched=True, method="func"),
        )
        assert all(torch.equal(before[k], t.view(torch.uint8)) for k, t in ws._bufs.items())
    finally:
        ws.release()
    with hv.memory_budget(16 * 1024):  # an eighth of it is less than the temporaries
        for _ in range(2):  # the plan for this budget, then a call it serves
            torch.testing.assert_close(
                hv.laplacian(model, X, batched=True),
                hv.laplacian(model, X, batched=True, method="func"),
            )
        small = _runner(model, X, "laplacian").workspace
    assert small is not ws and not small._bufs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_a_plan_on_the_gpu_keeps_no_buffers():
    """CUDA's caching allocator reuses memory per stream; buffers kept across calls would be
    shared by calls on different streams."""
    model = _model("tanh").cuda()
    X, V = (t.cuda() for t in _data(0))
    for _ in range(3):
        torch.testing.assert_close(
            hv.laplacian(model, X, batched=True),
            hv.laplacian(model, X, batched=True, method="func"),
        )
    assert not _runner(model, X, "laplacian").workspace._bufs


def test_all_plans_together_keep_at_most_an_eighth_of_the_budget_and_free_it_with_the_model():
    import gc

    from hessviz._memory import kept_bytes

    gc.collect()
    before = kept_bytes()
    budget = 64 * 1024 * 1024
    model = _model("tanh", sizes=(3, 64, 64, 1))
    with hv.memory_budget(budget):
        for B in (256, 512, 768, 1024, 1280, 1536):  # six plans of growing size
            X, V = _data(B, B=B)
            for _ in range(2):
                torch.testing.assert_close(
                    hv.laplacian(model, X, batched=True),
                    hv.laplacian(model, X, batched=True, method="func"),
                )
            assert before < kept_bytes() <= before + budget // 8
    del model
    gc.collect()
    assert kept_bytes() == before
