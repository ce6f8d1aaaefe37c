"""Large CPU arrays kept in the heap from one training step to the next (glibc on Linux only).

glibc serves every allocation above its mmap threshold (which grows by itself up to 32 MiB) with a fresh ``mmap``
and hands it back to the system when it is freed. A CPU training step of the ATAC likelihood allocates about ten
``(rows x peaks)`` arrays (54 MB each for 675 decoded rows x 20,000 peaks), so on every step the kernel maps and
zeroes them again, page by page. While :meth:`~pengster.model.JointVAE.train` runs on the CPU with ``fast=True``
the thresholds are raised, so those arrays come from the heap and are reused; afterwards they go back to the
dynamic defaults' ceiling and the heap's free memory is returned to the system (``malloc_trim``).

Measured (``all`` at batch 256, 2,000 cells x 20k peaks, one thread): 308 -> 342 cells per CPU second. A user's own
threshold settings (the ``MALLOC_*_`` environment variables of :data:`USER_SETTINGS`, or the same as
:data:`USER_TUNABLES` in ``GLIBC_TUNABLES``) are left alone. An older glibc that refuses a threshold above 32 MiB
(``mallopt`` returns 0) is left as it is too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRAINING_THRESHOLD = 1 << 30
"""Allocations up to 1 GiB come from the heap while training, and up to 1 GiB of free heap is kept."""
MMAP_THRESHOLD_CEILING = 32 << 20
TRIM_THRESHOLD_CEILING = 64 << 20
"""Where glibc's dynamic thresholds end up in a process that has freed a 32 MiB array (any torch session)."""


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - musl and others have no such symbol
    except (OSError, AttributeError):
        return None
    return libc


USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")
USER_TUNABLES = tuple(f"glibc.malloc.{name.removeprefix('MALLOC_').rstrip('_').lower()}" for name in USER_SETTINGS)
"""The same settings as ``GLIBC_TUNABLES`` entries (``glibc.malloc.mmap_threshold=...:...``); other tunables, such as
``glibc.malloc.arena_max``, do not count."""


def _user_tuned() -> bool:
    tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
    return any(name in os.environ for name in USER_SETTINGS) or any(
        entry.split("=")[0] in USER_TUNABLES for entry in tunables
    )


@contextlib.contextmanager
def heap_arrays(enabled: bool) -> Iterator[None]:
    """While training on the CPU with ``enabled``: large arrays from the heap (see the module's text)."""
    libc = _glibc() if enabled and not _user_tuned() else None
    # an older glibc refuses a threshold above 32 MiB (mallopt returns 0): then all is left as it is
    if libc is None or not libc.mallopt(M_MMAP_THRESHOLD, TRAINING_THRESHOLD):
        yield
        return
    libc.mallopt(M_TRIM_THRESHOLD, TRAINING_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_CEILING)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_CEILING)
        libc.malloc_trim(0)
