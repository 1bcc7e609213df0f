"""Reproducible toy models: ``mlp`` and the elementwise activations it offers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import ops as _ops
from ._errors import HessvizError

#: Activation names accepted by :func:`mlp` (the catalogue :data:`hessviz.ops.ACTIVATIONS`);
#: ``"linear"`` means no nonlinearity at all.
ACTIVATIONS: tuple[str, ...] = tuple(_ops.ACTIVATIONS)
Sin, Square = _ops.Sin, _ops.Square


def mlp(
    sizes: Sequence[int],
    activation: str = "tanh",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> nn.Sequential:
    """A reproducible multilayer perceptron ``Linear → σ → … → Linear``.

    Args:
        sizes: ``[n_in, hidden_1, …, n_out]``, at least two positive ints.
        activation: one of :data:`ACTIVATIONS`; ``"linear"`` inserts no activation.
        seed: weights are drawn from this seed; the global random state is left untouched.
        dtype: floating dtype of the parameters. The weights are drawn in float64 and cast, so
            the float32 and float64 models of one seed are the same network up to rounding.

    Returns:
        ``nn.Sequential`` mapping ``(..., n_in)`` to ``(..., n_out)``.

    Example:
        >>> model = mlp([3, 8, 2], "tanh", seed=0)
        >>> model(torch.zeros(5, 3, dtype=torch.float64)).shape  # batch 5, 2 outputs
        torch.Size([5, 2])
        >>> bool((mlp([3, 8, 2], seed=1)[0].weight == mlp([3, 8, 2], seed=1)[0].weight).all())
        True
    """
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise HessvizError(
            f"mlp: sizes must be a list of ints like [2, 16, 3], got {type(sizes).__name__}."
        )
    if len(sizes) < 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise HessvizError(
            f"mlp: sizes must be at least two positive ints [n_in, ..., n_out], "
            f"got {list(sizes)!r}."
        )
    if activation not in _ops.ACTIVATIONS:
        raise HessvizError(
            f"mlp: unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}."
        )
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise HessvizError(f"mlp: dtype must be a floating torch dtype, got {dtype!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HessvizError(f"mlp: seed must be an int, got {seed!r}.")
    act = _ops.ACTIVATIONS[activation].module
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out, dtype=torch.float64))
            if act is not None and i < len(sizes) - 2:
                layers.append(act())
    return nn.Sequential(*layers).to(dtype)
