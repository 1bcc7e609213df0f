"""Temporaries on the CPU without paying for their page faults again and again.

The CPU allocator does not cache memory: every fresh multi-megabyte tensor is new pages, and the
first touch of each 4 KiB page is a page fault. On the benchmark machine writing a fresh 98 MiB
Hessian cost 60–80 ms that way and 6 ms on 2 MiB pages, and the faults of the kernels'
temporaries cost as much as the arithmetic on them. The layer-wise kernels therefore allocate
large results with :func:`empty` (huge pages) and let temporaries of one role share a
:class:`Scratch` buffer.
"""

from __future__ import annotations

import ctypes
import math
import sys

import torch

_HUGE_PAGE = 2 << 20
_madvise_fn = None  # libc's madvise, looked up on first use (False where unavailable)


def _advise_huge_pages(t: torch.Tensor) -> None:
    """Ask Linux to back ``t``'s memory with transparent huge pages (no effect elsewhere).

    The CPU allocator hands out fresh memory for every large tensor, and the first touch of each
    4 KiB page is a page fault: on the benchmark machine, writing a fresh 98 MiB Hessian cost
    60–80 ms that way and 6 ms with 2 MiB pages. Only the 2 MiB-aligned interior of the buffer is
    advised; the request is ignored where THP is off. (``THP_MEM_ALLOC_ENABLE=1`` gives every
    PyTorch allocation the same treatment, process-wide; a library must not set that.)
    """
    global _madvise_fn
    if _madvise_fn is None:
        _madvise_fn = False
        if sys.platform.startswith("linux"):
            try:
                _madvise_fn = ctypes.CDLL(None, use_errno=True).madvise
            except (OSError, AttributeError):
                pass
    if not _madvise_fn:
        return
    start = -(-t.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
    end = (t.data_ptr() + t.numel() * t.element_size()) // _HUGE_PAGE * _HUGE_PAGE
    if end > start:
        _madvise_fn(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 14)  # MADV_HUGEPAGE


def empty(*shape: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor like ``like``; large CPU ones on huge pages (see above). Under
    ``torch.compile`` the compiled code allocates its own buffers: no advice (and no ctypes
    call to break its graph)."""
    t = like.new_empty(shape)
    if torch.compiler.is_compiling():
        return t
    if t.device.type == "cpu" and t.numel() * t.element_size() >= 2 * _HUGE_PAGE:
        _advise_huge_pages(t)
    return t


class Scratch:
    """One buffer reused by temporaries of the same role within a call.

    The CPU allocator does not cache memory: every fresh multi-megabyte temporary is paid again in
    page faults, which on the benchmark machine cost as much as the arithmetic on it. A temporary
    that is dead before the next one of its role is needed borrows this buffer instead.
    """

    def __init__(self) -> None:
        self._buf: torch.Tensor | None = None

    def __call__(self, *shape: int, like: torch.Tensor) -> torch.Tensor:
        size = math.prod(shape)
        if self._buf is None or self._buf.numel() < size:
            self._buf = empty(size, like=like)
        return self._buf[:size].view(shape)
