"""The C heap under torch's CPU tensors: glibc keeps freed memory for reuse and, with tensors of changing sizes,
leaves holes that make a process grow beyond what it uses (a `yoso train` run at 1000 tokens peaked at ~1.56x
its live memory). ``malloc_trim`` hands the free pages back to the OS; the next use faults them in again.
Used by the training loop (every few steps) and by the benchmarks' memory measurement.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library if it is glibc (has malloc_trim and mallopt), else None (macOS, musl, Windows)."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None
    return lib if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else None


def release_free_heap() -> bool:
    """Give the heap's free pages back to the OS; False where that is not available."""
    lib = libc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True
