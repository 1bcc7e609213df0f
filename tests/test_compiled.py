"""``hv.compile``: compiled layer-wise kernels that prove themselves, or plain calls."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import hessviz as hv
from hessviz import _hot, compiled, ops

D = torch.float64
AOT = "compiled ahead of time"
HAS_COMPILER = bool(shutil.which("g++") or shutil.which("c++"))  # both compilers need one


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels_win_the_race():
    """Unit tests do not time anything: on a busy machine the compile-time race (a best of five
    calls each) could keep the plain kernel and make the kernel-kind assertions flaky. Here it
    reports the compiled kernel faster; what a lost race does is tested on its own below."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compiled, "_race", lambda fast, plain, args: (0.0, 1.0))
        yield


@pytest.fixture(scope="module")
def compiled_mlp_and_warnings():
    net = hv.mlp([2, 16, 16, 3], "tanh", seed=0)
    X = torch.randn(8, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        c = hv.compile(net, X, batched=True, ops=("laplacian", "hvp"))
    return (net, X, c), shown


@pytest.fixture(scope="module")
def compiled_mlp(compiled_mlp_and_warnings):
    return compiled_mlp_and_warnings[0]


def test_compiling_shows_no_warning_about_torchs_own_code(compiled_mlp_and_warnings):
    """torch's LeafSpec FutureWarning from its own compiles (``hessviz._shims``) is not shown;
    nor is any other FutureWarning."""
    (_, _, c), shown = compiled_mlp_and_warnings
    assert not HAS_COMPILER or c.kernels["laplacian"] == AOT  # so torch did compile here
    future = [str(w.message) for w in shown if issubclass(w.category, FutureWarning)]
    assert future == []


def test_compiled_kernels_give_the_plain_numbers(compiled_mlp):
    net, X, c = compiled_mlp
    # "compiled" where torch.compile works here; else the reason, and plain calls
    assert set(c.kernels) == {"laplacian", "hvp"}
    for how in c.kernels.values():
        assert how == "compiled ahead of time" or how.startswith("eager: "), how
    if HAS_COMPILER:
        assert c.kernels == {"laplacian": AOT, "hvp": AOT}
    gen = torch.Generator().manual_seed(1)
    X2, V = torch.randn(8, 2, dtype=D, generator=gen), torch.randn(8, 2, dtype=D, generator=gen)
    torch.testing.assert_close(c.laplacian(X2), hv.laplacian(net, X2, batched=True, method="func"))
    torch.testing.assert_close(c.hvp(X2, V), hv.hvp(net, X2, V, batched=True, method="func"))
    # ops not compiled, and other shapes, take the plain path
    torch.testing.assert_close(c.hessian(X2), hv.hessian(net, X2, batched=True, method="func"))
    torch.testing.assert_close(
        c.laplacian(X2[:3]), hv.laplacian(net, X2[:3], batched=True, method="func")
    )


def test_results_are_fresh_tensors_and_trained_weights_are_read(compiled_mlp):
    net, X, c = compiled_mlp
    first = c.laplacian(X)
    kept = first.clone()
    second = c.laplacian(X * 0.5)
    assert torch.equal(first, kept)  # the second call did not write into the first's result
    assert not torch.equal(first, second)
    tracked = c.laplacian(X.clone().requires_grad_(True))  # x as a training loop holds it
    assert torch.equal(tracked, first) and not tracked.requires_grad
    assert torch.equal(c.laplacian(X.T.contiguous().T), first)  # a column-major x: same numbers
    lin = net[2]
    with torch.no_grad():
        lin.weight.mul_(1.5)  # an optimiser step: same tensor, new values
    try:
        assert not torch.equal(c.laplacian(X), first)
        torch.testing.assert_close(
            c.laplacian(X), hv.laplacian(net, X, batched=True, method="func")
        )
    finally:
        with torch.no_grad():
            lin.weight.div_(1.5)


def test_a_relaid_weight_a_changed_setting_and_a_bad_input_take_the_plain_path(capfd):
    net = nn.Sequential(nn.Linear(2, 6), nn.Softplus(beta=2.0), nn.Linear(6, 6), nn.Tanh(),
                        nn.Linear(6, 1)).to(D)  # fmt: skip
    X = torch.randn(5, 2, dtype=D, generator=torch.Generator().manual_seed(2))
    c = hv.compile(net, X, batched=True, ops=("hessian",))
    if HAS_COMPILER:
        assert c.kernels == {"hessian": AOT}

    def plain():
        return hv.hessian(net, X, batched=True, method="func")

    torch.testing.assert_close(c.hessian(X), plain())
    W = net[2].weight
    try:  # same storage, same shape, transposed strides: the library would misread it
        net[2].weight = nn.Parameter(W.detach().T)
        assert net[2].weight.data_ptr() == W.data_ptr()
        capfd.readouterr()
        for _ in range(3):
            torch.testing.assert_close(c.hessian(X), plain())
        # the library's refusal is printed once at most: then the layouts are checked first
        assert capfd.readouterr().err.count("unmatched") <= 1
    finally:
        net[2].weight = W
    net[1].beta = 3.0  # compiled in as a constant: the plain path takes over
    try:
        torch.testing.assert_close(c.hessian(X), plain())
    finally:
        net[1].beta = 2.0
    bad = X.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(hv.HessvizError, match="NaN|finite"):
        c.hessian(bad)
    torch.testing.assert_close(c.hessian(X), plain())


@pytest.mark.skipif(not HAS_COMPILER, reason="AOTInductor needs a C++ compiler")
def test_the_library_checks_its_own_inputs_and_the_environment_is_left_as_it_was(capfd):
    """The compiled library checks layouts and finiteness itself (no Python layout check on
    the CPU): fails when PyTorch stops reading ``AOTI_RUNTIME_CHECK_INPUTS`` once per library,
    and then ``_checks_its_inputs`` proves False and the Python check takes over."""
    import os

    net = hv.mlp([3, 8, 8, 2], "tanh", seed=3)
    X = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(3))
    V = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(4))
    before = os.environ.get("AOTI_RUNTIME_CHECK_INPUTS")
    c = hv.compile(net, X, batched=True, ops=("hvp", "diagonal"))
    assert os.environ.get("AOTI_RUNTIME_CHECK_INPUTS") == before  # set for the first calls only
    assert "unmatched" not in capfd.readouterr().err  # the proof's refusal is not printed
    assert c.kernels == {"hvp": AOT, "diagonal": AOT}
    for op in ("hvp", "diagonal"):
        kernel = c._entries[op][1]
        assert kernel.layout is None and kernel.proves_finite
        args = [X, V] if op == "hvp" else [X]
        args += [t.detach() for t in compiled.chain.tensors(kernel.chain)]
        assert kernel.run_library(args) is not None
        W = args[-2]  # the output layer's weight, (2, 8): stored transposed
        with pytest.raises(RuntimeError):
            kernel.run_library([*args[:-2], W.T.contiguous().T, args[-1]])
        with pytest.raises(RuntimeError):  # another dtype
            kernel.run_library([*args[:-2], W.float(), args[-1]])
        for bad in (float("nan"), float("inf")):
            X_bad = X.clone()
            X_bad[2, 1] = bad
            assert kernel.run_library([X_bad, *args[1:]]) is None
    V_bad = V.clone()
    V_bad[5, 0] = -float("inf")
    assert c._entries["hvp"][1].run_library([X, V_bad, *args[1:]]) is None
    with pytest.raises(hv.HessvizError, match="finite|inf"):
        c.hvp(X, V_bad)
    torch.testing.assert_close(c.hvp(X, V), hv.hvp(net, X, V, batched=True, method="func"))


@pytest.mark.skipif(not HAS_COMPILER, reason="AOTInductor needs a C++ compiler")
@pytest.mark.parametrize("op", ["laplacian", "hvp", "hessian"])
def test_a_library_compiled_for_one_chunk_runs_every_chunk_and_a_padded_last_one(op, monkeypatch):
    """A large batch is compiled for one chunk (as the plain kernels run it) and run chunk by
    chunk; 10 samples in chunks of 4 leave a last chunk of 2, padded to the compiled size."""
    from hessviz.structured import chain

    net = hv.mlp([3, 8, 8, 2], "sigmoid", seed=5)
    gen = torch.Generator().manual_seed(5)
    X, V = torch.randn(10, 3, dtype=D, generator=gen), torch.randn(10, 3, dtype=D, generator=gen)
    monkeypatch.setattr(chain, "chunk_size", lambda *args: 4)
    c = hv.compile(net, X, batched=True, ops=(op,))
    assert c.kernels == {op: AOT}
    args = (X, V) if op == "hvp" else (X,)
    got = getattr(c, op)(*args)
    ref = getattr(hv, op)(net, *args, batched=True, method="func")
    torch.testing.assert_close(got, ref)
    kernel = c._entries[op][1]
    assert kernel.run(net, *args, *([None] if op != "hvp" else [])).shape[0] == 10
    X_bad = X.clone()
    X_bad[9, 2] = float("nan")  # in the padded last chunk
    assert kernel.run(net, X_bad, V if op == "hvp" else None) is None
    with pytest.raises(hv.HessvizError, match="NaN"):
        getattr(c, op)(X_bad, *args[1:])


class Branchy(nn.Module):
    """A hand-written forward, lowered to a chain while ``square`` is off."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)
        self.square = False

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.b(h * h if self.square else h)


def test_a_lowered_custom_forward_compiles_and_its_branches_are_checked():
    model = Branchy().to(D)
    X = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(3))
    c = hv.compile(model, X, batched=True, ops=("diagonal",))
    assert c.kernels["diagonal"] == AOT or not HAS_COMPILER
    torch.testing.assert_close(
        c.hessian_diagonal(X), hv.hessian_diagonal(model, X, batched=True, method="func")
    )
    model.square = True  # the other branch: the compiled chain no longer equals f
    torch.testing.assert_close(
        c.hessian_diagonal(X), hv.hessian_diagonal(model, X, batched=True, method="func")
    )


def test_just_in_time_when_asked():
    net = hv.mlp([2, 5, 1], "sigmoid", seed=1)
    X = torch.randn(3, 2, dtype=D, generator=torch.Generator().manual_seed(4))
    c = hv.compile(net, X, batched=True, ops=("laplacian",), ahead_of_time=False)
    if HAS_COMPILER:
        assert c.kernels == {"laplacian": "compiled"}
    torch.testing.assert_close(c.laplacian(X), hv.laplacian(net, X, batched=True, method="func"))


@pytest.mark.skipif(not HAS_COMPILER, reason="both compilers need a C++ compiler")
@pytest.mark.parametrize("ahead_of_time", [True, False], ids=["library", "torch.compile"])
def test_a_last_bias_of_another_dtype_is_refused_and_nothing_compiles_again(ahead_of_time):
    """``f`` fails with its last bias in float32 on float64 inputs (no derivative reads that
    bias): the compiled kernel refuses it and the call raises the full path's error, as a fresh
    call does. A ``torch.compile``d kernel whose guards fail does not compile again: code
    compiled for the new guards promoted the float32 bias that eager PyTorch refuses."""
    from torch._dynamo.utils import counters

    net = hv.mlp([3, 8, 8, 2], "tanh", seed=3)
    X = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(3))
    c = hv.compile(net, X, batched=True, ops=("laplacian",), ahead_of_time=ahead_of_time)
    assert c.kernels == {"laplacian": AOT if ahead_of_time else "compiled"}
    c.laplacian(X)
    frames = counters["frames"]["total"]
    net[-1].bias.data = net[-1].bias.detach().float()
    with pytest.raises(hv.HessvizError, match="dtype"):
        c.laplacian(X)
    assert counters["frames"]["total"] == frames
    net[-1].bias.data = net[-1].bias.detach().double()
    torch.testing.assert_close(c.laplacian(X), hv.laplacian(net, X, batched=True, method="func"))


def test_a_changed_model_takes_the_plain_path(compiled_mlp):
    net, X, c = compiled_mlp
    old = net[1]
    try:
        net[1] = nn.Sigmoid()
        torch.testing.assert_close(
            c.laplacian(X), hv.laplacian(net, X, batched=True, method="func")
        )
    finally:
        net[1] = old
    torch.testing.assert_close(c.laplacian(X), hv.laplacian(net, X, batched=True, method="func"))


class Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.norm = nn.Linear(3, 4), nn.LayerNorm(4)

    def forward(self, x):
        return torch.tanh(self.norm(self.fc(x))).sum(-1)


def test_other_methods_stay_plain_and_bad_ops_are_refused():
    x = torch.randn(3, dtype=D)
    c = hv.compile(lambda x: x.sin().sum(), x, ops=("diagonal",))
    assert c.kernels == {"diagonal": "eager: graph"}
    torch.testing.assert_close(c.hessian_diagonal(x), -x.sin())
    model = Normed().to(D)  # the graph engine's (its plans are reused, not compiled)
    c = hv.compile(model, x, ops=("hessian",))
    assert c.kernels == {"hessian": "eager: graph"}
    torch.testing.assert_close(c.hessian(x), hv.hessian(model, x, method="func"))
    with pytest.raises(hv.HessvizError, match="ops must be"):
        hv.compile(lambda x: x.sin().sum(), x, ops="hessian")
    with pytest.raises(hv.HessvizError, match="ops must be"):
        hv.compile(lambda x: x.sin().sum(), x, ops=("jacobian",))


@pytest.mark.parametrize(
    ("t_fast", "why"),
    [(2e-3, "slower here (2 ms against 1 ms)"), (0.98e-3, "level here (0.98 ms against 1 ms)")],
    ids=["slower", "level"],
)
def test_a_compiled_kernel_slower_than_or_level_with_the_plain_one_is_not_kept(
    t_fast, why, monkeypatch
):
    monkeypatch.setattr(compiled, "_race", lambda fast, plain, args: (t_fast, 1e-3))
    net = hv.mlp([2, 4, 1], "tanh", seed=2)
    X = torch.randn(3, 2, dtype=D, generator=torch.Generator().manual_seed(5))
    c = hv.compile(net, X, batched=True, ops=("laplacian",), ahead_of_time=False)
    if HAS_COMPILER:
        assert c.kernels["laplacian"] == f"eager: compiled: {why}"
    assert "laplacian" not in c._entries
    torch.testing.assert_close(c.laplacian(X), hv.laplacian(net, X, batched=True, method="func"))


def test_a_narrowing_first_layer_keeps_the_plain_laplacian_and_nothing_compiles(monkeypatch):
    """``K_1 < n``: the plain chain Laplacian carries the first layer's ``K_1`` rows; a compiled
    one would carry ``n``. Neither form is compiled (no seconds spent on a kernel that loses),
    and the handle says why."""
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled"))
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: pytest.fail("exported"))
    net = hv.mlp([9, 4, 5, 2], "tanh", seed=3)
    X = torch.randn(3, 9, dtype=D, generator=torch.Generator().manual_seed(6))
    c = hv.compile(net, X, batched=True, ops=("laplacian",))
    why = "the first layer narrows (9 inputs, 4 units): the plain kernel carries 4 rows"
    assert c.kernels["laplacian"].startswith("eager: ") and c.kernels["laplacian"].count(why) == 2
    torch.testing.assert_close(c.laplacian(X), hv.laplacian(net, X, batched=True, method="func"))


def test_ahead_of_time_failing_falls_back_to_torch_compile(monkeypatch):
    def fails(*args):
        raise RuntimeError("no AOTInductor here")

    monkeypatch.setattr(compiled, "_ahead_of_time", fails)
    net = hv.mlp([2, 4, 1], "tanh", seed=3)
    X = torch.randn(3, 2, dtype=D, generator=torch.Generator().manual_seed(6))
    c = hv.compile(net, X, batched=True, ops=("hessian",))
    if HAS_COMPILER:
        assert c.kernels == {"hessian": "compiled"}
    torch.testing.assert_close(c.hessian(X), hv.hessian(net, X, batched=True, method="func"))


# --- the numpy chain HVP kernel (hessviz.structured.chain_numpy) ---------------------------------


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "sin"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("outputs", [None, [2, 0]], ids=["all", "two"])
def test_the_numpy_hvp_kernel_gives_the_plain_numbers(act, dtype, outputs):
    net = hv.mlp([3, 16, 16, 3], act, seed=4, dtype=dtype)
    gen = torch.Generator().manual_seed(8)
    X = torch.randn(6, 3, dtype=dtype, generator=gen)
    V = torch.randn(6, 3, dtype=dtype, generator=gen)
    c = hv.compile(net, X, batched=True, outputs=outputs, ops=("hvp",), ahead_of_time=False)
    assert c.kernels == {"hvp": compiled.IN_NUMPY}  # first in its round (the race ties here)
    X2, V2 = X.flip(0), V * 3  # other points than the example
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
    expected = hv.hvp(net, X2, V2, batched=True, outputs=outputs, method="func")
    torch.testing.assert_close(c.hvp(X2, V2), expected, **tol)


def test_numpy_closed_forms_equal_the_torch_ones_without_warnings():
    """Including where sigmoid's exp(-z) overflows (z = -800): 0, not a warning or NaN."""
    for dtype in (torch.float64, torch.float32):
        z = torch.cat([torch.linspace(-12, 12, 241, dtype=dtype), torch.tensor([-800.0, 800.0])])
        z = z.to(dtype)
        eps = torch.finfo(dtype).eps
        for name, numpy_form in ops.NUMPY_DERIVATIVES.items():
            buffers = [torch.empty_like(z) for _ in range(3)]
            expected = ops.DERIVATIVES_INTO[name](z.clone(), *buffers)
            got = [z.clone().numpy(), np.empty(z.shape, z.numpy().dtype), np.empty_like(z.numpy())]
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert numpy_form(*got) is None  # written into its arguments
            for g, e in zip(got, expected):
                g = torch.from_numpy(g)
                assert g.dtype == dtype and torch.isfinite(g).all()
                assert ((g - e).abs() <= 16 * eps * (1 + e.abs())).all(), name


def test_the_numpy_kernel_reads_updated_and_replaced_weights():
    net = hv.mlp([2, 8, 8, 2], "tanh", seed=6)
    gen = torch.Generator().manual_seed(9)
    X, V = torch.randn(5, 2, dtype=D, generator=gen), torch.randn(5, 2, dtype=D, generator=gen)
    c = hv.compile(net, X, batched=True, ops=("hvp",), ahead_of_time=False)
    assert c.kernels == {"hvp": compiled.IN_NUMPY}

    def plain():
        return hv.hvp(net, X, V, batched=True, method="func")

    first = c.hvp(X, V)
    with torch.no_grad():
        net[2].weight.mul_(1.5)  # an optimiser step: same tensor, new values
    assert not torch.equal(c.hvp(X, V), first)
    torch.testing.assert_close(c.hvp(X, V), plain())
    net[2].weight = nn.Parameter(net[2].weight.detach() * -1)  # a new tensor, same layout
    torch.testing.assert_close(c.hvp(X, V), plain())
    net[4].bias = nn.Parameter(net[4].bias.detach() + 1)  # the output bias: no effect on H
    torch.testing.assert_close(c.hvp(X, V), plain())


@pytest.mark.parametrize("case", ["softplus", "laplacian", "cuda"])
def test_the_numpy_kernel_is_refused_where_it_does_not_apply(case):
    act = "softplus" if case == "softplus" else "tanh"
    net = hv.mlp([2, 8, 1], act, seed=7)
    X = torch.randn(4, 2, dtype=D, generator=torch.Generator().manual_seed(1))
    op = "laplacian" if case == "laplacian" else "hvp"
    V = torch.ones_like(X)
    hv.laplacian(net, X, batched=True) if op == "laplacian" else hv.hvp(net, X, V, batched=True)
    entry = _hot.find(net, _hot.request_key(op, "auto", X, True, None))
    x = X.to("meta") if case == "cuda" else X  # any device but the CPU
    with pytest.raises(TypeError, match="numpy kernel"):
        compiled._in_numpy(entry, op, x, None if op == "laplacian" else V)


@pytest.mark.skipif(not HAS_COMPILER, reason="torch.compile needs a C++ compiler")
def test_a_just_in_time_kernel_is_not_compiled_again_on_later_calls():
    """The layer-wise kernel (100 inputs into width 64, a normalised stem: Jacobians carried in
    the hidden space) under torch.compile: later calls at the same shape compile no new frame.
    A storage-address comparison in the traced code was a guard on those addresses: every call
    with new buffers compiled again (2 s a call at a PINN point) until Dynamo's recompile
    limit."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    norm = nn.BatchNorm1d(64)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    net = (
        nn.Sequential(
            nn.Linear(100, 64), norm, nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
        )
        .to(D)
        .eval()
    )  # (not a chain of Linear layers and activations: the general kernels)
    X = torch.randn(16, 100, dtype=D, generator=torch.Generator().manual_seed(2))
    c = hv.compile(net, X, batched=True, ops=("laplacian",), ahead_of_time=False)
    assert c.kernels == {"laplacian": "compiled"}
    before = counters["frames"]["total"]
    for scale in (1.0, 2.0, 3.0, 4.0):
        got = c.laplacian(X * scale)
        hv.laplacian(net, X, batched=True)  # the plain path in between, as a user might
    assert counters["frames"]["total"] == before
    torch.testing.assert_close(got, hv.laplacian(net, X * 4.0, batched=True, method="func"))
