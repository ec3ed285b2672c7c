"""Which implementation runs an op: compiled CPU kernels, numba CPU kernels, or portable torch.

Every kernel of the ops is a torch.library custom operator (namespace ``yoso``, defined beside its op with a
fake implementation, so that torch.compile and torch.export see shapes and dtypes without running it). Each
operator's implementation calls ``dispatch``, the one place where the device picks the code. CPU tensors run the
CPU kernels, in this order of preference:

- **compiled**: ``csrc/cpu_kernels.cpp``, built at install where a C++ compiler is present (``kernels_cpp``). No
  JIT runtime in the process: numba keeps ~105 MB resident once loaded, which made a YOSO process use more memory
  than softmax's;
- **numba**: ``kernels_numba``, the same kernels compiled at first use (numba ships as wheels, no compiler needed);
- **torch**: the portable path, which any other device also runs.

``YOSO_CPU_KERNELS`` (``auto``, ``compiled``, ``numba`` or ``torch``) picks one for a process; ``auto`` (the default)
takes the first that loads. ``use_kernels`` and ``torch_only`` pick one inside a block. A set that cannot be loaded
gives one warning saying why, and the next one runs; only ``auto`` passing over compiled kernels that were never
built (no compiler at install) says nothing. ``YOSO_DISABLE_NUMBA=1`` (earlier releases) means ``torch``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

KERNEL_SETS = ("compiled", "numba", "torch")
_loaded: dict[str, Any] = {}  # kernel set -> its kernels, or None when it failed to load
_load_errors: dict[str, str] = {}
_not_built: set[str] = set()  # sets that failed only because nothing was built: auto passes them over silently
_warned: set[str] = set()
_forced: str | None = None  # set by use_kernels / torch_only
_from_env: str | None = None  # the environment's choice, read once (every operator call asks)


def _load_compiled():
    from . import kernels_cpp

    kernels = kernels_cpp.load()
    if kernels is None:
        _not_built.add("compiled")
        raise ImportError("not built (no C++ compiler with OpenMP at install)")
    return kernels


def _load_numba():
    from . import kernels_numba

    return kernels_numba


_LOADERS: dict[str, Callable[[], Any]] = {"compiled": _load_compiled, "numba": _load_numba}


def _load(name: str):
    """The kernels of one set, loaded once; None (with the reason in _load_errors) where they cannot be."""
    if name not in _loaded:
        try:
            _loaded[name] = _LOADERS[name]()
        except Exception as exc:  # ImportError, an unbuilt library, numba failing on an unsupported platform
            _loaded[name], _load_errors[name] = None, f"{type(exc).__name__}: {exc}"
    return _loaded[name]


def requested_kernels() -> str:
    """The kernel set asked for: ``use_kernels``'s inside one, else ``YOSO_CPU_KERNELS`` (``auto`` by default), read
    at the first operator call."""
    global _from_env
    if _forced is not None:
        return _forced
    if _from_env is None:
        name = os.environ.get("YOSO_CPU_KERNELS", "auto").strip().lower() or "auto"
        if os.environ.get("YOSO_DISABLE_NUMBA", "0") not in ("", "0"):
            name = "torch"
        elif name not in ("auto", *KERNEL_SETS):
            raise ValueError(f"YOSO_CPU_KERNELS must be one of auto, {', '.join(KERNEL_SETS)}; got {name!r}")
        _from_env = name
    return _from_env


def _cpu_choice() -> tuple[str, Any]:
    """(name, kernels) of the CPU kernels to run; kernels None for the torch path."""
    requested = requested_kernels()
    candidates = ("compiled", "numba") if requested == "auto" else () if requested == "torch" else (requested,)
    for name in candidates:
        kernels = _load(name)
        if kernels is not None:
            return name, kernels
        if (requested != "auto" or name not in _not_built) and name not in _warned:  # an unbuilt set: no word
            _warned.add(name)
            warnings.warn(f"yoso_attention: {name} CPU kernels unavailable ({_load_errors[name]}); using torch ops",
                          stacklevel=4)  # fmt: skip
    if requested == "auto" and "auto" not in _warned:
        _warned.add("auto")
        warnings.warn(f"yoso_attention: no CPU kernels ({_load_errors.get('numba')}); using torch ops", stacklevel=4)
    return "torch", None


def cpu_kernels(*tensors: torch.Tensor):
    """The CPU kernels to run on these tensors (compiled or numba, same functions), or None: a tensor off the CPU,
    the torch path asked for, or no kernels loadable."""
    if any(t.device.type != "cpu" for t in tensors):
        return None
    return _cpu_choice()[1]


def dispatch(cpu_impl: Callable, torch_impl: Callable, *args):
    """``cpu_impl(kernels, *args)`` where CPU kernels apply to the tensors among args, else ``torch_impl(*args)``.
    Called by every custom operator's implementation: the device dispatch of the ops."""
    kernels = cpu_kernels(*(a for a in args if isinstance(a, torch.Tensor)))
    return torch_impl(*args) if kernels is None else cpu_impl(kernels, *args)


@contextmanager
def use_kernels(name: str) -> Iterator[None]:
    """Run the ops' CPU work on one kernel set inside this block ("compiled", "numba", "torch" or "auto"): to
    compare them, or to measure one. Read when an operator runs, so it also applies inside compiled code."""
    global _forced
    if name not in ("auto", *KERNEL_SETS):
        raise ValueError(f"use_kernels: name must be one of auto, {', '.join(KERNEL_SETS)}; got {name!r}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def torch_only():
    """Run the ops on their portable torch path inside this block, on any device (``use_kernels("torch")``)."""
    return use_kernels("torch")


def active_paths() -> dict[str, str]:
    """Human-readable status of the fast paths (for ``yoso info``)."""
    name, kernels = _cpu_choice()
    if name == "compiled":
        cpu = f"compiled kernels ({kernels.path.name})"
    elif name == "numba":
        cpu = "numba kernels" + (f" (compiled: {_load_errors['compiled']})" if "compiled" in _load_errors else "")
    else:
        cpu = f"torch ops ({'; '.join(f'{k}: {v}' for k, v in _load_errors.items()) or 'asked for'})"
    return {"cpu": cpu, "cuda": "torch ops" if torch.cuda.is_available() else "no CUDA device"}


def is_traced(*tensors: torch.Tensor) -> bool:
    """Whether this runs inside torch.compile or torch.export, or on tensors that hold no data (FakeTensor and other
    subclasses): where values and generator states cannot be read."""
    return torch.compiler.is_compiling() or any(type(t) is not torch.Tensor for t in tensors)


def fp32_region(t: torch.Tensor):
    """The ops accumulate in fp32 themselves: autocast must not turn their matmuls into half precision."""
    return torch.autocast(t.device.type, enabled=False)


def as_numpy(t: torch.Tensor):
    """A C-contiguous numpy view (or copy) of a CPU tensor, detached from autograd."""
    return t.detach().contiguous().numpy()
