"""One registry of methods: feeds the public functions, the tests, the benchmark and the explorer.

Adding a :class:`Method` here adds a row everywhere. Kernels take a normalised problem chunk (see
:mod:`hessviz.methods`); operations a method does not implement itself are derived: the diagonal
from the full Hessian, the Laplacian from the diagonal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import engine, structured
from .methods import autograd, func, loop, taylor

OPERATIONS = ("hessian", "hvp", "diagonal", "laplacian")


@dataclass(frozen=True)
class Method:
    """A way of computing second derivatives.

    Attributes:
        name: the value of ``method=``.
        description: one line, shown in the explorer and the benchmark.
        kernels: operation name → kernel; see :func:`Method.kernel` for derived operations.
        exact: whether results are exact up to floating-point round-off.
        needs_structure: whether ``f`` must be a supported ``nn.Sequential``.
    """

    name: str
    description: str
    kernels: dict[str, Callable] = field(repr=False)
    exact: bool = True
    needs_structure: bool = False

    @property
    def computes(self) -> frozenset[str]:
        """The operations this method offers (implemented or derived)."""
        ops = set(self.kernels)
        if "hessian" in ops:
            ops.add("diagonal")
        if "diagonal" in ops:
            ops.add("laplacian")
        return frozenset(ops)

    def kernel(self, op: str) -> Callable:
        """The kernel for ``op``, deriving diagonal/Laplacian where not implemented directly."""
        if op in self.kernels:
            return self.kernels[op]
        if op == "diagonal":
            full = self.kernels["hessian"]
            return lambda p, X, sel: torch.diagonal(full(p, X, sel), dim1=-2, dim2=-1)
        if op == "laplacian":
            diag = self.kernel("diagonal")
            return lambda p, X, sel: diag(p, X, sel).sum(-1)
        raise KeyError(op)


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "loop",
            "one double-backward per output and input coordinate (the forum-thread loop)",
            {"hessian": loop.hessian, "diagonal": loop.diagonal, "hvp": loop.hvp},
        ),
        Method(
            "autograd",
            "torch.autograd.functional: vectorised Jacobian of each output's gradient",
            {"hessian": autograd.hessian, "diagonal": autograd.diagonal, "hvp": autograd.hvp},
        ),
        Method(
            "func",
            "torch.func forward-over-reverse jacfwd(jacrev), vmapped over the batch",
            {"hessian": func.hessian, "diagonal": func.diagonal, "hvp": func.hvp},
        ),
        Method(
            "structured",
            "layer-wise engine: Σ_l J_lᵀ diag(σ''⊙∂y/∂a_l) J_l from one forward Jacobian pass",
            {
                "hessian": structured.hessian,
                "diagonal": structured.diagonal,
                "laplacian": structured.laplacian,
                "hvp": structured.hvp,
            },
            needs_structure=True,
        ),
        Method(
            "graph",
            "graph engine: f captured as ATen ops, each node with curvature adds its own term",
            {
                "hessian": engine.hessian,
                "diagonal": engine.diagonal,
                "laplacian": engine.laplacian,
                "hvp": engine.hvp,
            },
        ),
        Method(
            "taylor",
            "forward-over-forward jvp∘jvp along each basis vector (diagonal only; never chosen by "
            "auto: PyTorch's second-order forward mode is wrong for layer_norm, batch_norm and "
            "solve)",
            {"diagonal": taylor.diagonal},
        ),
    ]
}
