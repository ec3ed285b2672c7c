"""Which implementation runs an op: the numba CPU kernels when they can, portable torch otherwise.

Numba ships as wheels (no compiler needed). If it cannot be imported, or ``YOSO_DISABLE_NUMBA=1`` is
set, every op falls back to its torch implementation, and a one-line notice says so once. CUDA tensors
always take the torch path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType, SimpleNamespace

import torch

_kernels: SimpleNamespace | None = None
_load_error: str | None = None
_warned = False
_torch_only = False


def _load() -> SimpleNamespace | None:
    global _kernels, _load_error
    if _kernels is None and _load_error is None:
        if os.environ.get("YOSO_DISABLE_NUMBA", "0") not in ("", "0"):
            _load_error = "disabled by YOSO_DISABLE_NUMBA"
        else:
            try:
                from . import kernels_numba

                _kernels = _opaque_to_torch_compile(kernels_numba)
            except Exception as exc:  # ImportError, or numba failing on an unsupported platform
                _load_error = f"{type(exc).__name__}: {exc}"
    return _kernels


def _opaque_to_torch_compile(module: ModuleType) -> SimpleNamespace:
    """The module's numba kernels, each hidden from torch.compile (a graph break around the call). Without
    it, a kernel's first call inside a compiled model, which runs numba's compiler in Python, gets traced:
    dynamo resumes inside numba's lowering after a graph break there, and the compilation fails."""
    reason = "numba kernel: runs outside the graph"
    return SimpleNamespace(**{name: torch.compiler.disable(f, reason=reason) for name, f in vars(module).items()
                              if hasattr(f, "py_func") and not name.startswith("_")})  # the public dispatchers


def numba_kernels(*tensors: torch.Tensor) -> SimpleNamespace | None:
    """The numba kernels (as ``_opaque_to_torch_compile`` hands them) if all tensors are on the CPU and numba
    is usable, else None."""
    global _warned
    if _torch_only or any(t.device.type != "cpu" for t in tensors):
        return None
    kernels = _load()
    if kernels is None and not _warned:
        _warned = True
        warnings.warn(f"yoso_attention: numba CPU kernels unavailable ({_load_error}); using torch ops", stacklevel=3)
    return kernels


@contextmanager
def torch_only() -> Iterator[None]:
    """Run the ops on their portable torch path inside this block (to compare the two paths)."""
    global _torch_only
    previous, _torch_only = _torch_only, True
    try:
        yield
    finally:
        _torch_only = previous


def active_paths() -> dict[str, str]:
    """Human-readable status of the fast paths (for ``yoso info``)."""
    kernels = _load()
    return {
        "cpu": "numba kernels" if kernels is not None else f"torch fallback ({_load_error})",
        "cuda": "torch ops" if torch.cuda.is_available() else "no CUDA device",
    }


def fp32_region(t: torch.Tensor):
    """The ops accumulate in fp32 themselves: autocast must not turn their matmuls into half precision."""
    return torch.autocast(t.device.type, enabled=False)


def as_numpy(t: torch.Tensor):
    """A C-contiguous numpy view (or copy) of a CPU tensor, detached from autograd."""
    return t.detach().contiguous().numpy()
