"""The memory budget: how many bytes one call may use for its result and working memory."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from ._errors import HessvizError

DEFAULT_MEMORY_BUDGET = 2 * 2**30
_budget: contextvars.ContextVar[int] = contextvars.ContextVar(
    "hessviz_memory_budget", default=DEFAULT_MEMORY_BUDGET
)


def _check(fname: str, nbytes: object) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
        raise HessvizError(
            f"{fname}: expected a positive number of bytes (an int), got {nbytes!r}; "
            "for example hv.set_memory_budget(4 * 2**30) for 4 GiB."
        )
    return nbytes


def get_memory_budget() -> int:
    """The memory budget in bytes (default 2 GiB) for one call's result and working memory."""
    return _budget.get()


def set_memory_budget(nbytes: int) -> None:
    """Set the memory budget in bytes for calls made from this context (thread / task).

    Work below the budget is split into chunks; a result that alone exceeds it is refused with a
    size estimate before anything large is allocated.
    """
    _budget.set(_check("set_memory_budget", nbytes))


@contextlib.contextmanager
def memory_budget(nbytes: int) -> Iterator[None]:
    """Temporarily set the memory budget, e.g. ``with hv.memory_budget(2**28): ...``."""
    token = _budget.set(_check("memory_budget", nbytes))
    try:
        yield
    finally:
        _budget.reset(token)


def format_bytes(nbytes: float) -> str:
    """Human-readable size: ``format_bytes(3 * 2**30) == '3.0 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    raise AssertionError("unreachable")
