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
import math
import mmap
import os
import sys
from collections.abc import Iterable
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


MATMUL_BUFFER_ROWS = 8192  # rows beyond which MKL's GEMM buffers stopped growing (measured up to 768 x 3072 weights)


def reserve_matmul_buffers(weight_shapes: Iterable[tuple[int, int]], rows: int) -> None:
    """Make, before training allocates anything per step, the buffers that torch's CPU matrix products keep.

    torch's x86 builds multiply through MKL, whose memory manager keeps buffers of a few MB per thread, made at
    the first product of each kind and size and never freed. Made inside a run's first step they land between its
    activations and keep freed ones from merging (at 4096 tokens, one 8 MB hole that put sampled yoso's resident
    peak 7 MB above softmax's, decided by which product ran first; docs/studies.md). This runs, once, the three
    products of training with every (out_features, in_features) weight shape, x W^T + b (forward), g W (input
    gradient) and g^T x (weight gradient), on min(rows, MATMUL_BUFFER_ROWS) rows of zeros, largest shapes first:
    smaller products then reuse their buffers (MQAR's weights: 17 MB kept in all, where ascending order kept 45
    and a training step's own order 30). Elsewhere (other BLAS libraries) it costs a few products, no memory.
    """
    import torch

    rows = max(1, min(rows, MATMUL_BUFFER_ROWS))
    with torch.no_grad():
        for d_out, d_in in sorted(set(weight_shapes), reverse=True):
            x, g, w, b = (_mapped_zeros(*shape) for shape in ((rows, d_in), (rows, d_out), (d_out, d_in), (d_out,)))
            torch.addmm(b, x, w.t(), out=_mapped_zeros(rows, d_out))  # F.linear's forward
            torch.mm(g, w, out=_mapped_zeros(rows, d_in))
            torch.mm(g.t(), x, out=_mapped_zeros(d_out, d_in))


def _mapped_zeros(*shape: int):
    """A float32 tensor of zeros on pages mapped for it (unmapped when it is freed): never in the heap, so that
    the buffers made beside it land where nothing else will be freed."""
    import torch

    return torch.frombuffer(mmap.mmap(-1, 4 * math.prod(shape)), dtype=torch.float32).view(shape)
