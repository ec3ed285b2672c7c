"""Input validation shared by the ops. Every error names the argument, what it got and what it expected."""

from __future__ import annotations

import torch

MAX_HASH_CODE_LEN = 20  # 2**20 buckets per hash table: beyond that the tables stop being a cache-sized object
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_hash_params(num_hash: int | None, hash_code_len: int) -> None:
    if num_hash is not None and (isinstance(num_hash, bool) or not isinstance(num_hash, int) or num_hash < 1):
        raise ValueError(f"num_hash must be an integer >= 1, got {num_hash!r}")
    if (
        isinstance(hash_code_len, bool)
        or not isinstance(hash_code_len, int)
        or not 1 <= hash_code_len <= MAX_HASH_CODE_LEN
    ):
        raise ValueError(f"hash_code_len must be an integer in [1, {MAX_HASH_CODE_LEN}], got {hash_code_len!r}")


def check_float(name: str, t: torch.Tensor, min_dim: int = 2) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float32, float16, bfloat16 or float64), got {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have shape (..., n, d) with at least {min_dim} dims, got {tuple(t.shape)}")
    if t.shape[-1] < 1 or t.shape[-2] < 1:
        raise ValueError(f"{name} must have n >= 1 and d >= 1, got shape {tuple(t.shape)}")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q (..., L, d), k (..., S, d), v (..., S, dv): same leading dims, device and dtype."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, t)
    for name, t in (("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; expected all on one device")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}; expected one dtype")
        if t.shape[:-2] != q.shape[:-2]:
            raise ValueError(
                f"{name} has leading dims {tuple(t.shape[:-2])} but q has {tuple(q.shape[:-2])}; expected equal"
            )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k has head dim {k.shape[-1]} but q has {q.shape[-1]}; expected equal")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v has length {v.shape[-2]} but k has {k.shape[-2]}; expected equal")


def check_mask(name: str, mask: torch.Tensor | None, shape: torch.Size, device: torch.device) -> torch.Tensor | None:
    """A bool mask broadcastable to ``shape`` (True = real token); returns it expanded to ``shape``."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool (True = real token), got {mask.dtype}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device}, expected {device}")
    try:
        return mask.expand(shape)
    except RuntimeError:
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)}, expected a shape broadcastable to {tuple(shape)}"
        ) from None


def check_codes(name: str, codes: torch.Tensor, hash_code_len: int) -> None:
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor, got {type(codes).__name__}")
    if codes.dtype not in (torch.int32, torch.int64, torch.int16, torch.uint8):
        raise TypeError(f"{name} must be an integer tensor, got {codes.dtype}")
    if codes.dim() < 2:
        raise ValueError(f"{name} must have shape (..., n, num_hash), got {tuple(codes.shape)}")
    if torch.compiler.is_compiling():
        return  # the value check below reads the tensor: eager only
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2**hash_code_len):
        raise ValueError(
            f"{name} has values in [{int(codes.min())}, {int(codes.max())}], "
            f"expected [0, {2**hash_code_len}) for hash_code_len={hash_code_len}"
        )
