"""The C heap under torch's CPU tensors: glibc keeps freed memory for reuse and, with tensors of changing sizes,
leaves holes that make a process grow beyond what it uses (a `yoso train` run at 1000 tokens peaked at ~1.56x
its live memory). ``malloc_trim`` hands the free pages back to the OS; the next use faults them in again.
Used by the training loop (every few steps) and by the benchmarks' memory measurement. Most of those holes come
from glibc's memalign, under every torch tensor: ``yoso train`` reruns itself under the memalign shim, which
serves those allocations from plain malloc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from pathlib import Path


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


SHIM_ENV = "YOSO_MEMALIGN_SHIM"  # "0": `yoso train` runs without the shim


def memalign_shim_path() -> Path | None:
    """The memalign shim built at install (csrc/memalign_shim.c; Linux), or None where it was not built."""
    return next(Path(__file__).parent.glob("_memalign_shim*.so"), None)


def memalign_shim_preloaded() -> bool:
    """Whether this process runs under the memalign shim: mapped into it (the loader skips a preload it cannot
    load, with a warning), not only named in LD_PRELOAD."""
    shim = memalign_shim_path()
    if shim is None or str(shim) not in os.environ.get("LD_PRELOAD", "").split(":"):
        return False
    try:
        return str(shim.resolve()) in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def shim_command(argv: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """The command and environment that rerun ``yoso argv`` under the memalign shim, or None where it does not
    apply: off glibc, shim not built, turned off (YOSO_MEMALIGN_SHIM=0), another library already preloaded (the
    shim frees through glibc: it must not sit on top of another allocator), or no interpreter path to rerun."""
    shim = memalign_shim_path()
    off = os.environ.get(SHIM_ENV) == "0" or os.environ.get("LD_PRELOAD") or not sys.executable
    if shim is None or libc() is None or off:
        return None
    return [sys.executable, "-m", "yoso_attention.cli", *argv], {**os.environ, "LD_PRELOAD": str(shim)}


def memalign_shim_status() -> str:
    """For `yoso info`: whether this process runs under the shim, and whether `yoso train` would."""
    if memalign_shim_preloaded():
        return "preloaded"
    if libc() is None:
        return "not used (not glibc)"
    if memalign_shim_path() is None:
        return "not built"
    if shim_command([]) is not None:
        return "yoso train preloads it"
    return f"off ({SHIM_ENV}=0 or another LD_PRELOAD)"


def run_under_memalign_shim(argv: list[str]) -> None:
    """Replace this process with ``yoso argv`` under the memalign shim where it applies (``shim_command``); else
    return. glibc's memalign leaves the holes of freed tensors a few bytes too small for the next tensor of their
    size (csrc/memalign_shim.c): under the shim a training run's resident peak falls by about a quarter (MQAR at
    1024 tokens: 902 -> 676 MB softmax, 950 -> 679 MB sampled yoso; docs/studies.md)."""
    command = shim_command(argv)
    if command is not None:
        args, env = command
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(args[0], args, env)
