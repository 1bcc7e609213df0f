"""Every model of the catalogue (``tests/catalogue.py``) against its float64 reference.

For each case: ``hv.hessian``, ``hv.hessian_diagonal``, ``hv.laplacian`` and ``hv.hvp`` with the
default ``method="auto"``, in float64 (to 1e-8) and on the same model in float32 (to 5e-4), both
as the case is built and, for batched cases, on its first sample alone, unbatched. Errors are
relative to ``1 + max|H_ref|``. Then the results' consistency with each other, the reference's own
soundness, and that ``hv.explain`` names the method that really runs.
"""

from __future__ import annotations

import functools
import inspect
import warnings

import pytest
import torch
from catalogue import CATALOGUE, randn
from torch.nn.attention import SDPBackend, sdpa_kernel

import hessviz as hv

F64, F32 = torch.float64, torch.float32
TOLERANCE = {"float64": 1e-8, "float32": 5e-4}
DTYPES = {"float64": F64, "float32": F32}
OPS = ("hessian", "diagonal", "laplacian", "hvp")
#: Whether each case is batched (its builds are cheap).
BATCHED = {c.id: c.build(F64)[2] for c in CATALOGUE}


def _layouts(c):
    return ("as-built", "one-sample") if BATCHED[c.id] else ("as-built",)


RUNS = [
    pytest.param(c, dtype, layout, op, id=f"{c.id}-{dtype}-{layout}-{op}")
    for c in CATALOGUE
    for dtype in DTYPES
    for layout in _layouts(c)
    for op in OPS
]
CASES = [pytest.param(c, id=c.id) for c in CATALOGUE]


def direction(x: torch.Tensor) -> torch.Tensor:
    """The fixed random ``v`` of the HVP checks (the same numbers in every dtype)."""
    return randn(*x.shape, seed=1234, dtype=x.dtype)


def compute(op: str, f, x, batched: bool, v=None, **kw) -> torch.Tensor:
    if op == "hessian":
        return hv.hessian(f, x, batched=batched, **kw)
    if op == "diagonal":
        return hv.hessian_diagonal(f, x, batched=batched, **kw)
    if op == "laplacian":
        return hv.laplacian(f, x, batched=batched, **kw)
    return hv.hvp(f, x, direction(x) if v is None else v, batched=batched, **kw)


def expected(op: str, H: torch.Tensor, x: torch.Tensor, batched: bool) -> torch.Tensor:
    """``op``'s answer read off the reference Hessian ``H`` (``S_out + S_in + S_in``, batched: a
    leading ``B``) at ``x``, in hessviz's layout."""
    lead = x.shape[:1] if batched else ()
    s_in = x.shape[1:] if batched else x.shape
    n = s_in.numel()
    s_out = H.shape[len(lead) : H.dim() - 2 * len(s_in)]
    Hf = H.reshape(*lead, -1, n, n)
    if op == "hessian":
        return H
    if op == "hvp":
        v = direction(x).to(H.dtype).reshape(*lead, 1, n, 1)
        return (Hf @ v).reshape(*lead, *s_out, *s_in)
    diagonal = torch.diagonal(Hf, dim1=-2, dim2=-1)
    if op == "diagonal":
        return diagonal.reshape(*lead, *s_out, *s_in)
    return diagonal.sum(-1).reshape((*lead, *s_out))


def relative_error(result: torch.Tensor, want: torch.Tensor, H_ref: torch.Tensor) -> float:
    """``max|result − want| / (1 + max|H_ref|, max|want|)``."""
    scale = 1.0 + max(H_ref.abs().max().item(), want.abs().max().item())
    return (result.to(F64) - want).abs().max().item() / scale


@functools.cache
def built(c, dtype: torch.dtype):
    """``c.build(dtype)``, once per session: the same model object across the four operations,
    as a user calling them in turn would have (hessviz plans once per model and shape)."""
    return c.build(dtype)


@functools.cache
def first_sample(c, dtype: torch.dtype):
    """``c.one_sample`` of the cached build, once per session."""
    f, x, _ = built(c, dtype)
    return c.one_sample(f, x)


def problem(c, dtype: str, layout: str, H_ref: torch.Tensor):
    """``(f, x, batched, H)``: the case built in ``dtype``, as built or on its first sample."""
    f, x, batched = built(c, DTYPES[dtype])
    if layout == "one-sample":
        f, x = first_sample(c, DTYPES[dtype])
        return f, x, False, H_ref[0]
    return f, x, batched, H_ref


@pytest.mark.parametrize(("c", "dtype", "layout", "op"), RUNS)
def test_matches_the_float64_reference(c, dtype, layout, op, catalogue_reference):
    f, x, batched, H_ref = problem(c, dtype, layout, catalogue_reference.hessian(c))
    x_ref = x.detach().to(F64, copy=True)
    want = expected(op, H_ref, x_ref, batched)
    result = compute(op, f, x, batched)
    assert torch.equal(x, x_ref.to(x.dtype)), "x changed (it is reused by the other operations)"
    assert result.shape == want.shape, f"shape {tuple(result.shape)}, expected {tuple(want.shape)}"
    assert result.dtype == x.dtype
    assert torch.isfinite(result).all()
    error = relative_error(result, want, H_ref)
    assert error <= TOLERANCE[dtype], (
        f"{c.id} ({c.notes}), {dtype}, {layout}, {op}: relative error {error:.2e} "
        f"(tolerance {TOLERANCE[dtype]:.0e})"
    )


@pytest.mark.parametrize("c", CASES)
def test_results_agree_with_each_other(c, catalogue_reference):
    """Symmetric Hessian, HVP with e_j = column j, diagonal = diag(H), Laplacian = trace."""
    f, x, batched = built(c, F64)
    B = x.shape[0] if batched else 1
    n = (x[0] if batched else x).numel()
    H = hv.hessian(f, x, batched=batched, flat=True).reshape(B, -1, n, n)
    tol = 1e-8 * (1 + catalogue_reference.hessian(c).abs().max().item())
    problems = []

    def check(what: str, a: torch.Tensor, b: torch.Tensor):
        gap = (a.reshape(b.shape) - b).abs().max().item()
        if gap > tol:
            problems.append(f"{what}: off by {gap:.2e}")

    check("H = Hᵀ", H, H.transpose(-1, -2))
    D = hv.hessian_diagonal(f, x, batched=batched, flat=True)
    check("diagonal = diag(H)", D, torch.diagonal(H, dim1=-2, dim2=-1))
    L = hv.laplacian(f, x, batched=batched)
    check("laplacian = trace(H)", L, torch.diagonal(H, dim1=-2, dim2=-1).sum(-1))
    for j in sorted({0, n // 3, n // 2, n - 1}):
        e = torch.zeros(B, n, dtype=F64)
        e[:, j] = 1
        Hv = hv.hvp(f, x, e.reshape(x.shape), batched=batched, flat=True)
        check(f"hvp(e_{j}) = column {j}", Hv, H[..., j])
    assert not problems, f"{c.id}: " + "; ".join(problems)


@pytest.mark.parametrize("c", CASES)
def test_the_reference_is_sound(c, catalogue_reference):
    """The reference agrees with a double-backward HVP of a random output combination, and a
    batched case's samples do not interact (its Hessian is block-diagonal over the batch)."""
    H, x, batched = catalogue_reference.full(c)
    f, x, _ = c.build(F64)
    s_in = x.shape
    w = randn(*H.shape[: H.dim() - 2 * x.dim()], seed=99, dtype=F64)
    v = randn(*s_in, seed=98, dtype=F64)
    with sdpa_kernel(SDPBackend.MATH):
        xr = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad((f(xr) * w).sum(), xr, create_graph=True)
        (Hv,) = (
            torch.autograd.grad((g * v).sum(), xr, allow_unused=True)
            if g.requires_grad
            else (None,)
        )
    Hv = torch.zeros_like(x) if Hv is None else Hv
    want = (w.reshape(-1, 1) * H.reshape(w.numel(), -1)).sum(0).reshape(x.numel(), x.numel())
    want = (want @ v.reshape(-1)).reshape(s_in)
    scale = 1 + H.abs().max().item() * x.numel()
    assert (Hv - want).abs().max().item() <= 1e-10 * scale
    if batched:
        assert catalogue_reference.cross_sample_max(c) <= 1e-12 * (1 + H.abs().max().item())


def _spy(name: str, kernel, ran: list):
    def run(*args, **kwargs):
        ran.append(name)
        return kernel(*args, **kwargs)

    return run


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("c", CASES)
def test_explain_names_the_method_that_runs(c, op, monkeypatch):
    """``hv.explain(f, x)`` reports the method that really runs; a path change inside ``auto``
    comes with a warning."""
    if not hasattr(hv, "explain"):
        pytest.skip("hv.explain does not exist yet")
    f, x, batched = built(c, F64)
    kwargs = {"batched": batched}
    if "op" in inspect.signature(hv.explain).parameters:
        kwargs["op"] = op
    elif op != "hessian":
        pytest.skip("hv.explain takes no op: checked for the Hessian")
    ran: list[str] = []
    for name, meth in hv.METHODS.items():
        kernels = getattr(meth, "kernels", None)
        if isinstance(kernels, dict):
            for key, kernel in list(kernels.items()):
                monkeypatch.setitem(kernels, key, _spy(name, kernel, ran))
    info = hv.explain(f, x, **kwargs)
    assert isinstance(info.method, str) and info.method, info
    assert isinstance(info.reason, str) and info.reason, info
    ran.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compute(op, f, x, batched)
    fallback = getattr(hv, "HessvizFallbackWarning", UserWarning)
    said = [w for w in caught if issubclass(w.category, fallback)]
    if ran:  # the registry's kernels are what runs: the last one gave the result
        assert ran[-1] == info.method, f"explain says {info.method!r}, ran {ran}"
        if len(set(ran)) > 1:
            assert said, f"auto switched paths {ran} without a warning"
