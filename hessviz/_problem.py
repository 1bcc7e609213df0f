"""Validation at the public boundary, and the normalised problem every method works on.

Every public function turns ``(f, x, batched, outputs)`` into a :class:`Problem`: ``X`` of shape
``(B, n)`` (one row per sample, flattened), the per-sample input/output shapes, and the selected
flat output indices. Methods compute ``(B, m, …)`` arrays; :meth:`Problem.shape_result` lays them
out as the public shape contract ``S_out + S_in + S_in`` (batched: a leading ``B``).
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._errors import HessvizError

_STOCHASTIC_OR_COUPLING = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


@contextlib.contextmanager
def grad_mode() -> Iterator[None]:
    """Autograd on, inference mode off: works inside ``no_grad()`` and ``inference_mode()``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Attention on PyTorch's math backend while ``f`` is differentiated twice by autograd.

    The fused CPU/GPU attention kernels have first derivatives only. Entered where ``f`` itself
    runs under second-order autograd (the generic methods, the self-checks, the graph capture),
    not on the engines' hot paths.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


@dataclass(frozen=True)
class Problem:
    """A validated request, normalised to flat per-sample coordinates.

    Attributes:
        f: the user's function.
        X: ``(B, n)`` detached copy of the input (unbatched: ``B = 1``).
        sample_shape: ``S_in`` (the shape of one sample).
        out_shape: ``S_out`` (the shape of ``f``'s output for one sample).
        batched: whether the user passed a batch.
        sel: selected flat output indices (length ``m``).
        outputs_kind: ``"all"``, ``"int"`` or ``"list"``, from the ``outputs`` argument.
    """

    f: Callable[[torch.Tensor], torch.Tensor]
    X: torch.Tensor
    sample_shape: torch.Size
    out_shape: torch.Size
    batched: bool
    sel: tuple[int, ...]
    outputs_kind: str
    Y: torch.Tensor | None = None  # (B, M): f's output at X, as computed when validating

    @property
    def B(self) -> int:
        return self.X.shape[0]

    @property
    def n(self) -> int:
        return self.X.shape[1]

    @property
    def M(self) -> int:
        return self.out_shape.numel()

    @property
    def m(self) -> int:
        return len(self.sel)

    @property
    def all_outputs(self) -> bool:
        return self.outputs_kind == "all"

    def batch_fn(self, X: torch.Tensor) -> torch.Tensor:
        """``(B', n) → (B', M)``: ``f`` on a batch of flat samples, each row independently."""
        if self.batched:
            return self.f(X.reshape(X.shape[0], *self.sample_shape)).reshape(X.shape[0], -1)
        if X.shape[0] == 1:
            return self.f(X.reshape(self.sample_shape)).reshape(1, -1)
        return torch.stack([self.sample_fn(row) for row in X])  # rows of an unbatched f

    def sample_fn(self, x: torch.Tensor) -> torch.Tensor:
        """``(n,) → (M,)``: ``f`` on one flat sample (used under ``torch.func`` transforms)."""
        if self.batched:
            out = self.f(x.reshape(1, *self.sample_shape))
            if out.shape[:1] != (1,) or out[0].numel() != self.M:
                # e.g. a loss with a fixed label tensor for the whole batch: f is only defined
                # on the batch it was given, and one row cannot be differentiated on its own.
                raise RuntimeError(
                    f"f maps one sample to shape {tuple(out.shape)}, not (1, {self.M}): it is "
                    "only defined on the whole batch"
                )
            return out.reshape(-1)
        return self.f(x.reshape(self.sample_shape)).reshape(-1)

    def result_shape(self, n_input_axes: int, flat: bool) -> tuple[int, ...]:
        """The public shape of a ``(B, m, n^k)`` method result, with its leading ``B`` (which
        :meth:`shape_result` drops for an unbatched ``x``): ``n_input_axes`` is
        :data:`RESULT_AXES` of the op."""
        m = self.m
        if flat:
            tail = (self.n,) * n_input_axes
            head: tuple[int, ...] = (m,)
            if self.outputs_kind == "int" or (self.all_outputs and len(self.out_shape) == 0):
                head = ()
        else:
            tail = tuple(self.sample_shape) * n_input_axes
            head = {"all": tuple(self.out_shape), "int": (), "list": (m,)}[self.outputs_kind]
        return (self.B, *head, *tail)

    def shape_result(self, R: torch.Tensor, n_input_axes: int, flat: bool) -> torch.Tensor:
        """Lay out a ``(B, m, n^k)`` method result as the public shape contract.

        ``n_input_axes`` is 2 for Hessians, 1 for diagonals/HVPs and 0 for Laplacians.
        """
        shape = (R.shape[0], *self.result_shape(n_input_axes, flat)[1:])
        out = R if R.shape == shape else R.reshape(shape)
        return out if self.batched else out[0]


#: per op, the number of input axes of each output's result: Hessians ``n × n``, diagonals and
#: HVPs ``n``, Laplacians a number
RESULT_AXES = {"hessian": 2, "diagonal": 1, "hvp": 1, "laplacian": 0}


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _model_hint(f: object, x: torch.Tensor) -> str:
    if not isinstance(f, nn.Module):
        return ""
    p = next(f.parameters(), None)
    if p is None:
        return ""
    hints = []
    if p.dtype != x.dtype:
        hints.append(
            f"the model's parameters are {p.dtype} but x is {x.dtype} (use x.to({p.dtype}))"
        )
    if p.device != x.device:
        hints.append(f"the model is on {p.device} but x is on {x.device} (move one of them)")
    return (" Likely cause: " + "; ".join(hints) + ".") if hints else ""


def check_method(fname: str, method: object, names: Sequence[str]) -> str:
    if not isinstance(method, str) or (method != "auto" and method not in names):
        raise HessvizError(
            f"{fname}: unknown method {method!r}; choose 'auto' or one of {', '.join(names)} "
            "(see hv.METHODS)."
        )
    return method


def check_input(fname: str, x: object, name: str = "x") -> torch.Tensor:
    """Check that ``x`` is a non-empty, finite, real floating tensor."""
    if not isinstance(x, torch.Tensor):
        raise HessvizError(
            f"{fname}: {name} must be a torch.Tensor, got {type(x).__name__}; "
            f"wrap it with torch.as_tensor({name}, dtype=torch.float64)."
        )
    if x.is_complex() or not x.is_floating_point():
        raise HessvizError(
            f"{fname}: {name} must be a real floating tensor, got dtype {x.dtype}; "
            f"convert it with {name}.double() or {name}.float()."
        )
    if x.numel() == 0:
        raise HessvizError(f"{fname}: {name} is empty ({_describe(x)}); pass at least one value.")
    with torch.inference_mode(False):
        finite = bool(torch.isfinite(x.detach()).all())
    if not finite:
        raise HessvizError(
            f"{fname}: {name} contains NaN or inf; derivatives are only defined at finite points."
        )
    return x


def _check_modules(fname: str, f: object, batched: bool) -> None:
    if not isinstance(f, nn.Module):
        return
    for name, mod in f.named_modules():
        if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.p == 0:
            continue  # Dropout(p=0) is the identity in either mode (torchvision's MLP keeps one)
        if isinstance(mod, _STOCHASTIC_OR_COUPLING) and mod.training:
            kind = (
                "Dropout (random)"
                if isinstance(mod, nn.modules.dropout._DropoutNd)
                else ("BatchNorm in training mode (couples the samples of a batch)")
            )
            raise HessvizError(
                f"{fname}: the model contains {kind} at {name or 'the top level'!r} and is in "
                "training mode, so its Hessian is not well defined"
                + (" per sample" if batched else "")
                + ". Call model.eval() first (and model.train() afterwards if you need it)."
            )


def _parse_outputs(fname: str, outputs: object, M: int) -> tuple[tuple[int, ...], str]:
    if outputs is None:
        return tuple(range(M)), "all"
    if isinstance(outputs, torch.Tensor):
        if outputs.is_floating_point() or outputs.is_complex() or outputs.dtype == torch.bool:
            raise HessvizError(
                f"{fname}: outputs must hold ints, got a tensor of dtype {outputs.dtype}."
            )
        outputs = outputs.item() if outputs.ndim == 0 else outputs.tolist()
    if isinstance(outputs, bool):
        raise HessvizError(f"{fname}: outputs must be None, an int or a list of ints, got a bool.")
    try:
        single = operator.index(outputs)
        items, kind = [single], "int"
    except TypeError:
        if isinstance(outputs, (str, bytes)) or not isinstance(outputs, Sequence):
            raise HessvizError(
                f"{fname}: outputs must be None, an int or a list of ints, got "
                f"{type(outputs).__name__}."
            ) from None
        items, kind = list(outputs), "list"
        if not items:
            raise HessvizError(
                f"{fname}: outputs is an empty list; pass None for all outputs."
            ) from None
    sel = []
    for item in items:
        if isinstance(item, bool):
            raise HessvizError(f"{fname}: outputs must be ints, got the bool {item!r}.")
        try:
            q = operator.index(item)
        except TypeError:
            raise HessvizError(
                f"{fname}: outputs must be ints, got {item!r} ({type(item).__name__})."
            ) from None
        if not -M <= q < M:
            raise HessvizError(
                f"{fname}: outputs={item} is out of range: f has {M} output"
                f"{'s' if M != 1 else ''} per sample (flattened), so valid indices are "
                f"0..{M - 1} (or negative from the end)."
            )
        sel.append(q % M)
    return tuple(sel), kind


def prepare(
    fname: str, f: object, x: object, *, batched: object, outputs: object
) -> tuple[Problem, torch.Tensor]:
    """Validate the arguments, call ``f`` once, and build the :class:`Problem`.

    Returns the problem and ``f``'s output at ``x`` (detached).
    """
    if not callable(f):
        raise HessvizError(
            f"{fname}: f must be callable (an nn.Module or a function of a tensor), "
            f"got {type(f).__name__}."
        )
    if not isinstance(batched, bool):
        raise HessvizError(f"{fname}: batched must be True or False, got {batched!r}.")
    x = check_input(fname, x)
    if batched and x.ndim == 0:
        raise HessvizError(
            f"{fname}: batched=True needs x with a leading batch dimension, got a 0-d tensor; "
            "pass x[None] or batched=False."
        )
    _check_modules(fname, f, batched)
    X = x.detach().clone()  # our own copy: never aliases the user's tensor
    try:
        with torch.no_grad():
            y = f(X)
    except Exception as err:
        raise HessvizError(
            f"{fname}: f raised {type(err).__name__} when called on x ({_describe(x)}): {err}."
            f"{_model_hint(f, x)} Check that x has the shape, dtype and device the model expects."
        ) from err
    if isinstance(y, (tuple, list)):
        raise HessvizError(
            f"{fname}: f returned a {type(y).__name__} of {len(y)} items, not a tensor; "
            "differentiate one of them, e.g. lambda x: f(x)[0]."
        )
    if not isinstance(y, torch.Tensor):
        raise HessvizError(f"{fname}: f must return a torch.Tensor, got {type(y).__name__}.")
    if y.is_complex() or not y.is_floating_point():
        raise HessvizError(
            f"{fname}: f returned a tensor of dtype {y.dtype}; its Hessian needs a real "
            "floating output."
        )
    if y.numel() == 0:
        raise HessvizError(f"{fname}: f returned an empty tensor ({_describe(y)}).")
    if batched:
        if y.ndim == 0 or y.shape[0] != x.shape[0]:
            raise HessvizError(
                f"{fname}: with batched=True, f must keep the batch dimension: x has batch size "
                f"{x.shape[0]} but f(x) has shape {tuple(y.shape)}. Use batched=False to "
                "differentiate f(x) as a whole, or make f return one row per sample."
            )
        sample_shape, out_shape = X.shape[1:], y.shape[1:]
        X = X.reshape(X.shape[0], -1)
    else:
        sample_shape, out_shape = X.shape, y.shape
        X = X.reshape(1, -1)
    sel, kind = _parse_outputs(fname, outputs, out_shape.numel())
    problem = Problem(
        f, X, sample_shape, out_shape, batched, sel, kind, y.detach().reshape(X.shape[0], -1)
    )
    return problem, y.detach()
