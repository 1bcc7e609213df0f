"""hessviz: exact, fast input Hessians of neural networks.

Shapes follow one contract: ``x`` has shape ``S_in`` and ``f(x)`` shape ``S_out``; Hessians are
``S_out + S_in + S_in``, diagonals and HVPs ``S_out + S_in``, Laplacians ``S_out``; ``batched=True``
adds a leading ``B`` of per-sample results. The compute layer imports torch only; plotting lives in
:mod:`hessviz.figures` and widgets in :mod:`hessviz.widgets`.
"""

from ._budget import get_memory_budget, memory_budget, set_memory_budget
from ._errors import HessvizError
from .api import LayerTerm, auto_method, hessian, hessian_diagonal, hvp, laplacian, layer_terms
from .finite_differences import default_fd_step, fd_diagonal, fd_hessian
from .hutchinson import hutchinson_diagonal
from .models import ACTIVATIONS, mlp
from .registry import METHODS, Method

__version__ = "0.1.0"

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
    # models
    "mlp",
    "ACTIVATIONS",
    # configuration and errors
    "get_memory_budget",
    "set_memory_budget",
    "memory_budget",
    "HessvizError",
]
