"""The compiled CPU kernels (``csrc/cpu_kernels.cpp``, built at install): the numba kernels' functions, same names,
same numpy arguments, called through ctypes. No JIT in the process: importing numba and compiling or loading its
kernels keeps ~105 MB resident (docs/guides/memory.md); this library is ~0.3 MB.

``load()`` finds the library built beside this module (the extension ``_cpu_kernels``, one build per x86-64
feature level where the compiler offers them, the best one this CPU runs) and returns None where none was built.
Array contracts as in ``kernels_numba``: C-contiguous float32 rows, codes uint8 / int16 / int32, bool masks.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import numpy as np
import torch

_CODE_SUFFIX = {np.dtype(np.uint8): "u8", np.dtype(np.int16): "i16", np.dtype(np.int32): "i32"}
# The builds beyond the baseline (_cpu_kernels), most demanding first; each is named _cpu_kernels<suffix> (setup.py).
_LEVELS = (("_x86_64_v4", "x86-64-v4"), ("_x86_64_v3", "x86-64-v3"))


def _ptr(a: np.ndarray, dtype=None) -> ctypes.c_void_p:
    if not a.flags.c_contiguous:
        raise ValueError(f"compiled kernels take C-contiguous arrays, got strides {a.strides} for shape {a.shape}")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise ValueError(f"compiled kernels take {np.dtype(dtype)} here, got {a.dtype}")
    return ctypes.c_void_p(a.ctypes.data)


def _codes_suffix(*codes: np.ndarray) -> str:
    dtypes = {c.dtype for c in codes}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _CODE_SUFFIX:
        raise ValueError(f"codes must share one of uint8, int16, int32, got {sorted(map(str, dtypes))}")
    return _CODE_SUFFIX[next(iter(dtypes))]


def _threads() -> ctypes.c_int:
    return ctypes.c_int(torch.get_num_threads())  # the kernels use torch's thread count, as torch's own ops do


class CompiledKernels:
    """The kernel functions of one loaded build (``kernels_numba``'s names and arguments)."""

    def __init__(self, lib: ctypes.CDLL, path: Path):
        self._lib, self.path = lib, path

    def _call(self, name: str, *args) -> None:
        getattr(self._lib, name)(*args)

    def fast_hash_codes(self, x, signs, num_hash, tau, codes):
        batch, n, heads, d = x.shape
        _, parts, _, d_pad = signs.shape
        self._call(f"fast_hash_codes_{_codes_suffix(codes)}", _ptr(x, np.float32), *_i64(batch, n, heads, d),
                   _ptr(signs, np.float32), *_i64(parts, d_pad, num_hash, tau), _ptr(codes), _threads())  # fmt: skip

    def gaussian_hash_codes(self, x, draws, num_hash, tau, codes):
        batch, n, heads, d = x.shape
        if draws.shape != (batch * heads, d, num_hash * tau):
            raise ValueError(f"draws must be (B, d, num_hash * tau) = {(batch * heads, d, num_hash * tau)}, got {draws.shape}")
        self._call(f"gaussian_hash_codes_{_codes_suffix(codes)}", _ptr(x, np.float32), *_i64(batch, n, heads, d),
                   _ptr(draws, np.float32), *_i64(num_hash, tau), _ptr(codes), _threads())  # fmt: skip

    def lsh_cumulation(self, q_codes, k_codes, v, q_mask, k_mask, n_buckets, out):
        n_b, m, n_q = q_codes.shape
        _, n_k, heads, dv = v.shape
        self._call(f"lsh_cumulation_{_codes_suffix(q_codes, k_codes)}", _ptr(q_codes), _ptr(k_codes),
                   *_i64(n_b, m, n_q, n_k), _ptr(v, np.float32), *_i64(heads, dv), _ptr(q_mask, np.bool_),
                   _ptr(k_mask, np.bool_), _i64(n_buckets)[0], _ptr(out, np.float32), _threads())  # fmt: skip

    def _weighted(self, name, q_codes, k_codes, q, k, q_inv, k_inv, v, dout, q_mask, k_mask, n_buckets, dq, dk):
        n_b, m, n_q = q_codes.shape
        _, n_k, heads, d = k.shape
        floats = [_ptr(a, np.float32) for a in (q, k, q_inv, k_inv, v, dout)]
        self._call(f"{name}_{_codes_suffix(q_codes, k_codes)}", _ptr(q_codes), _ptr(k_codes),
                   *_i64(n_b, m, n_q, n_k), *floats, *_i64(heads, d, v.shape[3]), _ptr(q_mask, np.bool_),
                   _ptr(k_mask, np.bool_), _i64(n_buckets)[0], _ptr(dq, np.float32), _ptr(dk, np.float32),
                   _threads())  # fmt: skip

    def lsh_weighted_backward(self, *args):
        self._weighted("lsh_weighted_backward", *args)

    def lsh_weighted_backward_sparse(self, *args):
        self._weighted("lsh_weighted_backward_sparse", *args)

    def collision_prob_(self, cos, k_mask, tau):
        self._call("collision_prob", _ptr(cos, np.float32), _ptr(k_mask, np.float32), *_i64(*cos.shape, tau),
                   _threads())  # fmt: skip

    def collision_prob_and_weight_(self, cos, dov, k_mask, tau, exact, eps):
        if dov.shape != cos.shape:
            raise ValueError(f"dov must have cos's shape {cos.shape}, got {dov.shape}")
        self._call("collision_prob_and_weight", _ptr(cos, np.float32), _ptr(dov, np.float32),
                   _ptr(k_mask, np.float32), *_i64(*cos.shape, tau), ctypes.c_int(int(exact)), ctypes.c_float(eps),
                   _threads())  # fmt: skip

    def unit_rows_backward(self, x, raw, norm, grad, eps, short_scale, out):
        n_b, n, d = x.shape
        self._call("unit_rows_backward", _ptr(x, np.float32), ctypes.c_int(int(raw)), _ptr(norm, np.float32),
                   _ptr(grad, np.float32), *_i64(n_b * n, d), ctypes.c_float(eps), ctypes.c_float(short_scale),
                   _ptr(out, np.float32), _threads())  # fmt: skip


def _i64(*values: int) -> list[ctypes.c_int64]:
    return [ctypes.c_int64(int(v)) for v in values]


def load_library(suffix: str) -> ctypes.CDLL | None:
    spec = importlib.util.find_spec(f"{__package__}._cpu_kernels{suffix}")
    if spec is None or spec.origin is None:
        return None
    lib = ctypes.CDLL(spec.origin)
    lib.yoso_cpu_supports.argtypes = [ctypes.c_char_p]
    return lib


def load() -> CompiledKernels | None:
    """The most capable build this CPU runs, or None where no build exists (no compiler at install). A build that
    exists but does not load raises (OSError from the loader)."""
    baseline = load_library("")  # answers for the CPU: its probe runs no newer instructions
    if baseline is None:
        return None
    for suffix, level in _LEVELS:
        lib = load_library(suffix) if baseline.yoso_cpu_supports(level.encode()) else None
        if lib is not None:
            return CompiledKernels(lib, Path(lib._name))
    return CompiledKernels(baseline, Path(baseline._name))
