"""Process-wide allocator settings for the coordinator: freed memory goes back to the system.

The coordinator makes and drops large buffers (layer graphs for checks, prefill chunks,
onnxruntime's intermediates with no arena) on several threads. glibc's malloc by default
gives each thread its own arena and raises its mmap threshold after large frees, so such
buffers end up reused poorly and never returned: measured on Qwen2.5-Coder-1.5B, the
serving process grew from 0.77 GB idle to 2 GB. `keep_memory_returnable` caps the arenas,
fixes the mmap threshold (buffers of 1 MB and more are mapped, so freeing them returns them)
and `trim` hands back what is free. No-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
M_TRIM_THRESHOLD = -1   # mallopt parameters (glibc malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:   # no C library to load by that name: leave the allocator alone
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_memory_returnable() -> None:
    libc = _libc()
    if libc is None:
        return
    for parameter, value in ((M_ARENA_MAX, 2), (M_MMAP_THRESHOLD, 1 << 20), (M_TRIM_THRESHOLD, 16 << 20)):
        if not libc.mallopt(parameter, value):
            log.debug("mallopt(%d, %d) refused", parameter, value)


def trim() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
