"""Which implementation runs an op: the numba CPU kernels when they can, portable torch otherwise.

Every kernel of the ops is a torch.library custom operator (namespace ``yoso``, defined beside its op with a
fake implementation, so that torch.compile and torch.export see shapes and dtypes without running it). Each
operator's implementation calls ``dispatch``, the one place where the device picks the code: CPU tensors run the
numba kernels, any other device (or CPU inside ``torch_only()``, or with ``YOSO_DISABLE_NUMBA=1``, or without
numba) the torch path. Numba ships as wheels (no compiler needed); when it cannot be imported, a one-line notice
says so once.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import torch

_kernels: ModuleType | None = None
_load_error: str | None = None
_warned = False
_torch_only = False


def _load() -> ModuleType | None:
    """The numba kernel module, or None (with the reason in _load_error)."""
    global _kernels, _load_error
    if _kernels is None and _load_error is None:
        if os.environ.get("YOSO_DISABLE_NUMBA", "0") not in ("", "0"):
            _load_error = "disabled by YOSO_DISABLE_NUMBA"
        else:
            try:
                from . import kernels_numba

                _kernels = kernels_numba
            except Exception as exc:  # ImportError, or numba failing on an unsupported platform
                _load_error = f"{type(exc).__name__}: {exc}"
    return _kernels


def numba_kernels(*tensors: torch.Tensor) -> ModuleType | None:
    """The numba kernel module if all tensors are on the CPU, numba is usable and not switched off, else None."""
    global _warned
    if _torch_only or any(t.device.type != "cpu" for t in tensors):
        return None
    kernels = _load()
    if kernels is None and not _warned:
        _warned = True
        warnings.warn(f"yoso_attention: numba CPU kernels unavailable ({_load_error}); using torch ops", stacklevel=3)
    return kernels


def dispatch(numba_impl: Callable, torch_impl: Callable, *args):
    """``numba_impl(kernels, *args)`` where the numba kernels apply to the tensors among args, else
    ``torch_impl(*args)``. Called by every custom operator's implementation: the device dispatch of the ops."""
    kernels = numba_kernels(*(a for a in args if isinstance(a, torch.Tensor)))
    return torch_impl(*args) if kernels is None else numba_impl(kernels, *args)


@contextmanager
def torch_only() -> Iterator[None]:
    """Run the ops on their portable torch path inside this block, on any device (to compare the two paths, or to
    measure the torch path on CPU). Read when an operator runs, so it also applies inside compiled code."""
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
