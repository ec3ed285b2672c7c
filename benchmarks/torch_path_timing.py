"""The ops' torch path (what CUDA and CPUs without numba run) against the numba kernels, forward and forward +
backward of `yoso_lsh`, in two settings: the op benchmark's (12 x 4096 rows of d 64, tau 9, m 32) and the MQAR
model's at 8192 tokens (8 x 8192 rows of d 32, tau 14, m 16). Gaussian hash, the best of 2 calls. Run it with
nothing else on the machine; against another commit's library with PYTHONPATH=OTHER_CHECKOUT/src.
    .venv/bin/python benchmarks/torch_path_timing.py
"""

from __future__ import annotations

import contextlib
import time

import torch

import yoso_attention
from yoso_attention import yoso_lsh
from yoso_attention.ops.backend import torch_only

SETTINGS = [(12, 4096, 64, 32, 9), (8, 8192, 32, 16, 14)]  # (batch x heads, n, d, m, tau)


def best_seconds(q, k, v, num_hash: int, tau: int) -> tuple[float, float]:
    """(forward, forward + backward) seconds, the best of 2 calls with the same hash functions."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        out = yoso_lsh(q, k, v, num_hash=num_hash, hash_code_len=tau, fast_hash=False,
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
        forward = time.perf_counter() - start
        out.sum().backward()
        times.append((forward, time.perf_counter() - start))
    return min(times)


def main() -> None:
    print(f"yoso_attention from {yoso_attention.__file__}")
    for rows, n, d, num_hash, tau in SETTINGS:
        gen = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(1, rows, n, d, generator=gen).requires_grad_() for _ in range(3))
        for path, context in (("numba", contextlib.nullcontext), ("torch path", torch_only)):
            with context():
                forward, both = best_seconds(q, k, v, num_hash, tau)
            print(f"{rows} x {n}, d {d}, m {num_hash}, tau {tau}, {path}: forward {forward * 1e3:.0f} ms, "
                  f"forward + backward {both * 1e3:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
