"""Generic Hessian methods that work for any differentiable function.

Each module implements kernels on a normalised :class:`hessviz._problem.Problem` chunk:
``X`` of shape ``(B, n)`` and the selected flat outputs ``sel`` (length ``m``), returning
``(B, m, n, n)`` Hessians, ``(B, m, n)`` diagonals or HVPs, or ``(B, m)`` Laplacians.
Batched problems rely on samples being independent (the gradient of the batch sum of output ``i``
holds every sample's own gradient), which the public functions require of batched ``f``.
"""
