"""hessviz: exact, fast input Hessians of neural networks.

Shapes follow one contract: ``x`` has shape ``S_in`` and ``f(x)`` shape ``S_out``; Hessians are
``S_out + S_in + S_in``, diagonals and HVPs ``S_out + S_in``, Laplacians ``S_out``; ``batched=True``
adds a leading ``B`` of per-sample results. The compute layer imports torch only; plotting lives in
:mod:`hessviz.figures` and widgets in :mod:`hessviz.widgets`.
"""

from typing import TYPE_CHECKING

from ._budget import get_memory_budget, memory_budget, set_memory_budget
from ._errors import HessvizError, HessvizFallbackWarning

__version__ = "0.1.0"

#: The public names that need torch, by the submodule that defines them. They are imported on
#: first use (PEP 562), so ``import hessviz`` does not import torch: the dashboard's Voila
#: server and the Jupyter server extension in :mod:`hessviz.serve` never compute, and stay
#: ~190 MB smaller.
_TORCH_NAMES = {
    "api": "Explanation LayerTerm auto_method explain hessian hessian_diagonal hvp laplacian "
    "layer_terms",
    "compiled": "Compiled compile",
    "finite_differences": "default_fd_step fd_diagonal fd_hessian",
    "hutchinson": "hutchinson_diagonal",
    "models": "ACTIVATIONS mlp",
    "registry": "METHODS Method",
}


def __getattr__(name: str):
    if not any(name in names.split() for names in _TORCH_NAMES.values()):
        raise AttributeError(f"module 'hessviz' has no attribute {name!r}")
    from . import api, compiled, finite_differences, hutchinson, models, registry  # noqa: F401

    for module, names in _TORCH_NAMES.items():  # later lookups no longer come here
        globals().update({n: getattr(globals()[module], n) for n in names.split()})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what editors and type checkers see
    from .api import (
        Explanation,
        LayerTerm,
        auto_method,
        explain,
        hessian,
        hessian_diagonal,
        hvp,
        laplacian,
        layer_terms,
    )
    from .compiled import Compiled, compile
    from .finite_differences import default_fd_step, fd_diagonal, fd_hessian
    from .hutchinson import hutchinson_diagonal
    from .models import ACTIVATIONS, mlp
    from .registry import METHODS, Method


__all__ = [
    # exact second derivatives
    "hessian",
    "hessian_diagonal",
    "hvp",
    "laplacian",
    "layer_terms",
    "LayerTerm",
    # estimates and checks
    "fd_hessian",
    "fd_diagonal",
    "default_fd_step",
    "hutchinson_diagonal",
    # methods
    "METHODS",
    "Method",
    "auto_method",
    "explain",
    "Explanation",
    "compile",
    "Compiled",
    # models
    "mlp",
    "ACTIVATIONS",
    # configuration and errors
    "get_memory_budget",
    "set_memory_budget",
    "memory_budget",
    "HessvizError",
    "HessvizFallbackWarning",
]
