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
import threading
import weakref

import torch

from ._gemm import PLAIN

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


_memcmp_fn = None  # libc's memcmp, looked up on first use (False where unavailable)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool | None:
    """Whether two plain contiguous CPU tensors of one shape and dtype hold the same bytes
    (libc's ``memcmp``: one read of each, ~5× faster than ``torch.equal`` on a 1.6 MB weight
    here); None where that cannot be asked (another device or layout, a tensor subclass, no
    libc) — compare with ``torch.equal`` then. Equal bytes are equal values; the converse
    fails only for ``-0.0``/``0.0`` and NaN payloads, so a cache keyed on it is only ever
    rebuilt too often, never kept wrongly."""
    global _memcmp_fn
    if _memcmp_fn is None:
        _memcmp_fn = False
        try:
            fn = ctypes.CDLL(None).memcmp
            fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p] * 2 + [ctypes.c_size_t]
            _memcmp_fn = fn
        except (OSError, AttributeError):
            pass
    if not (
        _memcmp_fn
        and type(a) in PLAIN
        and type(b) in PLAIN
        and a.is_cpu
        and b.is_cpu
        and a.shape == b.shape
        and a.dtype == b.dtype
        and a.is_contiguous()
        and b.is_contiguous()
    ):
        return None
    return _memcmp_fn(a.data_ptr(), b.data_ptr(), a.numel() * a.element_size()) == 0


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


class Workspace:
    """Buffers one plan keeps between its calls, one per role.

    The CPU allocator returns freed memory to the system between calls, so a kernel's
    temporaries are fresh pages on every call, each first touch a page fault: on the benchmark
    machine that doubled the time of a PINN Laplacian (width 64, batch 1024). A repeated call's
    kernel takes its temporaries from here instead; the buffers outlive the call, the results
    never live in them.

    CPU only (CUDA's caching allocator already reuses memory). One call at a time:
    :meth:`acquire` fails while another thread holds the workspace (that call gets fresh
    buffers). All workspaces together keep at most an eighth of the memory budget: a call
    whose buffers would pass that lets them go when it ends (:meth:`release`). A workspace
    made with ``keep=False`` hands out fresh buffers every time (what kernels get when no plan
    keeps one, and under ``torch.compile``).
    """

    def __init__(self, keep: bool = False) -> None:
        self._bufs: dict = {}
        self._keep = keep
        self._lock = threading.Lock()
        self._kept = [0]  # bytes this workspace counts in _KEPT (a cell its finalizer reads)
        self._grew = False
        if keep:
            weakref.finalize(self, _forget, self._kept)

    @property
    def keeps(self) -> bool:
        """Whether buffers outlive the call (False: every request is a fresh tensor)."""
        return self._keep

    def acquire(self) -> bool:
        """Take the workspace for one call (False: another call has it)."""
        return self._lock.acquire(blocking=False)

    def release(self) -> None:
        """End the call: count new buffers against the budget (letting them all go if they
        would pass it) and free the workspace for the next call."""
        if self._grew:
            self._grew = False
            self._account()
        self._lock.release()

    def _account(self) -> None:
        from ._budget import get_memory_budget

        size = sum(t.numel() * t.element_size() for t in self._bufs.values())
        with _KEPT_LOCK:
            if _KEPT[0] - self._kept[0] + size > get_memory_budget() // 8:
                self._bufs.clear()
                size = 0
            _KEPT[0] += size - self._kept[0]  # one update: a finalizer's own stays counted
            self._kept[0] = size

    def __call__(self, role: object, *shape: int, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised ``shape`` tensor like ``like`` for ``role``: the one kept from the
        last call when it matches, else a new one (kept, if this workspace keeps buffers).

        A plan's dtype and device are part of its request: only the dtype is checked (a
        tensor on another device fails in the kernel, which sends the call down the full path).
        """
        if not self._keep:
            return empty(*shape, like=like)
        key = (role, shape)
        t = self._bufs.get(key)
        if t is None or t.dtype is not like.dtype:
            t = self._bufs[key] = empty(*shape, like=like)
            self._grew = True
        return t


_KEPT = [0]  # bytes all live workspaces keep
_KEPT_LOCK = threading.RLock()  # re-entrant: a finalizer may run in a collection inside it


def kept_bytes() -> int:
    """Bytes all plans' workspaces keep between calls."""
    return _KEPT[0]


def _forget(cell: list) -> None:
    with _KEPT_LOCK:
        _KEPT[0] -= cell[0]


#: the workspace of a call that keeps nothing: fresh buffers (shared, it holds no state)
FRESH = Workspace()
