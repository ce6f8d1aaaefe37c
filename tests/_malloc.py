"""What glibc's malloc does with large arrays, read through mallinfo2 (test_heap.py runs these in fresh processes)."""

from __future__ import annotations

import ctypes

import torch

MB = 1 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:  # not glibc (musl)
        return False


def _mallinfo2() -> _MallInfo2:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2()


def _mapped_for(n_bytes: int) -> int:
    """Bytes glibc maps afresh (mallinfo2's hblkhd) for an untouched array of ``n_bytes``."""
    before = _mallinfo2().hblkhd
    array = torch.empty(n_bytes // 4)
    grown = _mallinfo2().hblkhd - before
    del array
    return grown


def heap_holds_a_64mb_array() -> bool:
    return _mapped_for(64 * MB) == 0


def large_arrays_are_mapped(limit: int) -> bool | None:
    """Whether an array of 64 MB or more that no free chunk of the heap can hold is mapped afresh.

    glibc maps an allocation above its threshold only when no free chunk holds it, and a process's heap can keep large
    free chunks below memory still in use: in CI a 64 MB array came from the heap outside ``heap_arrays``. None when
    the heap holds so much free memory that such an array would reach ``limit`` (the threshold while training).
    """
    info = _mallinfo2()
    n_bytes = max(info.fordblks - info.keepcost, info.keepcost) + 64 * MB  # keepcost: the top chunk
    if n_bytes >= limit:
        return None
    return _mapped_for(n_bytes) >= n_bytes
