r"""The layer-wise engine: exact input Hessians of affine/elementwise networks from their structure.

For a network that alternates affine maps (Linear, Conv, Flatten, average pooling, eval-mode
BatchNorm, …) and elementwise activations ``a_l = σ_l(z_l)``, the Hessian of output ``i`` w.r.t.
the input ``x`` is exactly

.. math:: H_i = \sum_l J_l^\top \operatorname{diag}\big(σ_l''(z_l) ⊙ ∂y_i/∂a_l\big)\, J_l,
          \qquad J_l = ∂z_l/∂x,

because affine maps have no curvature: every second derivative comes from one activation layer.
``J_l`` is carried forward with the values (one pass), ``∂y_i/∂a_l`` comes from one reverse sweep
vectorised over the selected outputs, and the sum is a few batched matrix products. Its diagonal
is :math:`\sum_l \sum_k c_{l,k} (J_l)_{kj}^2` with ``c_l = σ_l'' ⊙ ∂y_i/∂a_l`` — about the cost of
one forward Jacobian, far cheaper than ``n`` Hessian-vector products.

More exploits: (1) the affine *stem* before the first activation is the same for every sample;
when it narrows the input (``K_1 < n``, e.g. ``Linear(784, 256)``), Jacobians are carried in the
``K_1``-dimensional space, where the first activation's term is a plain diagonal, and mapped back
once, :math:`H = A^\top H_{z_1} A`, when the cost model says that pays; the Laplacian needs only
column norms there, through :math:`A A^\top` (``K_1 × K_1``) — for a chain, through the ``K_1``
rows of :math:`R` with :math:`R^\top R = A A^\top` carried by the forward Laplacian in place of
the ``n`` rows of :math:`A^\top`; the stem's map, that Gram and that factor are kept between calls
while the stem's tensors still equal the copies they came from. (2) HVPs
need no Jacobian at all: one forward tangent, one reverse sweep with the curvature injected per
layer. (3) The affine *tail* after the last activation is sample-independent: ``∂y_i/∂a_L`` is
computed once (for a final ``Linear`` it is a row of its weight), and no Jacobian or tangent is
carried through it.
(4) Per-op overhead dominates small models: the common activations have closed-form σ', σ'';
kernels run without autograd recording; every layer's term is one batched GEMM accumulated in
place; temporaries of the same role share one scratch buffer, and a plan keeps the chain
kernels' temporaries between its calls (fresh CPU memory is a page fault per 4 KiB page).

Every term is returned by :func:`layer_terms`, so the explorer can show what each layer contributes.

Layout: :mod:`.layers` (what the engine knows and how it parses a model), :mod:`.jacobian`
(the three kinds of Jacobian it carries), :mod:`.kernels` (the general kernels), :mod:`.chain`
(lean kernels for Linear/activation chains), :mod:`.cost` (the self-check of the layer split and
the cost model). Kernels follow :mod:`hessviz.registry`: ``X``
is ``(B, n)``, ``sel`` the selected flat outputs.
"""

from .cost import Cost, check, cost
from .kernels import diagonal, hessian, hvp, laplacian, layer_terms, runner
from .layers import Unsupported, parse

__all__ = ["Cost", "Unsupported", "check", "cost", "diagonal", "hessian", "hvp", "laplacian",
           "layer_terms", "parse", "runner"]  # fmt: skip
