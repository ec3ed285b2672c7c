"""Op benchmark: yoso_lsh and yoso_expectation against torch SDPA and the dense YOSO-E formula, one run.

Setting of the project's targets: (batch, heads) = (1, 12), head dim 64, tau 9, m 32, fp32. SDPA gets
4-D (batch, heads, n, d) tensors (on 3-D input torch takes a slower kernel, which would flatter us).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..ops import yoso_expectation, yoso_lsh
from ..ops.backend import torch_only
from .timing import in_fresh_process, median_seconds, peak_bytes

DENSE_MAX_BYTES = 1 << 30  # skip the dense YOSO-E formula when one n x n matrix would exceed this (n > 4096)


@dataclass
class OpResult:
    method: str
    n: int
    pass_: str  # "fwd" or "fwd+bwd"
    seconds: float
    peak_mb: float


def dense_yoso_e(q, k, v, tau):
    """The reference's formula as transformers computes it: (1 - arccos(Q K^T) / pi) ** tau V."""
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    return (1 - torch.acos(q @ k.transpose(-1, -2)) / math.pi) ** tau @ v


def _methods(heads: int, d: int, num_hash: int, tau: int):
    def sampled(q, k, v):
        return yoso_lsh(q, k, v, num_hash=num_hash, hash_code_len=tau)

    return {
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        "dense_yoso_e": lambda q, k, v: dense_yoso_e(q, k, v, tau),
        "yoso_e": lambda q, k, v: yoso_expectation(q, k, v, hash_code_len=tau),
        "yoso_lsh": sampled,
        "yoso_lsh_model_layout": sampled,  # on the strided inputs of STRIDED_INPUTS
        "yoso_lsh_torch_path": sampled,  # forward and backward inside torch_only(): what CUDA and no-numba CPUs run
    }


STRIDED_INPUTS = {"yoso_lsh_model_layout"}  # called with the layout models hand the ops (see model_layout)
TORCH_PATH = {"yoso_lsh_torch_path"}


def model_layout(x: torch.Tensor) -> torch.Tensor:
    """The same values as a strided view, as YosoSelfAttention's _split_heads produces."""
    return x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(x.requires_grad)


def _calls(lengths, heads: int, d: int, num_hash: int, tau: int, backward: bool, progress=print) -> list[tuple]:
    """(method, n, pass, call) for every row, on inputs seeded by n: the same in every process."""
    calls = []
    for n in lengths:
        gen = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(1, heads, n, d, generator=gen) for _ in range(3))
        for name, fn in _methods(heads, d, num_hash, tau).items():
            if name == "dense_yoso_e" and heads * n * n * 4 > DENSE_MAX_BYTES:
                progress(f"n={n:6d} {name:13s} skipped: an n x n matrix needs {heads * n * n * 4 / 2**30:.1f} GB")
                continue
            strided = name in STRIDED_INPUTS  # the strided inputs are made here, outside the measured call
            qs, ks, vs = (model_layout(t) if strided else t for t in (q, k, v))
            path = torch_only() if name in TORCH_PATH else lambda call: call  # torch_only() wraps each call
            calls.append((name, n, "fwd", path(lambda fn=fn, q=qs, k=ks, v=vs: fn(q, k, v))))
            if backward:
                qg, kg, vg = ((model_layout(t) if strided else t.clone()).requires_grad_() for t in (q, k, v))
                bwd = path(lambda fn=fn, qg=qg, kg=kg, vg=vg: fn(qg, kg, vg).sum().backward())
                calls.append((name, n, "fwd+bwd", bwd))
    return calls


def _peaks_mb(*sizes) -> list[float]:
    """Each row's peak RSS growth (MB) after one warm-up call; run in a fresh process (in_fresh_process)."""
    peaks = []
    for _, _, pass_name, call in _calls(*sizes, progress=lambda _: None):
        with torch.set_grad_enabled(pass_name != "fwd"):
            call()  # first-call costs (kernel loading) apart
            peaks.append(peak_bytes(call) / 2**20)
    return peaks


def run_op_benchmark(
    lengths=(512, 1024, 2048, 4096, 8192, 16384),
    heads: int = 12,
    d: int = 64,
    num_hash: int = 32,
    tau: int = 9,
    backward: bool = True,
    repeats: int = 3,
    progress=print,
) -> list[OpResult]:
    """Times every row here, then measures its peak memory in a fresh process (see timing.py)."""
    sizes = (tuple(lengths), heads, d, num_hash, tau, backward)
    results = []
    for name, n, pass_name, call in _calls(*sizes, progress=progress):
        with torch.set_grad_enabled(pass_name != "fwd"):
            sec = median_seconds(call, repeats=repeats)
        results.append(OpResult(name, n, pass_name, sec, float("nan")))
        progress(f"n={n:6d} {name:13s} {pass_name:8s} {sec * 1e3:10.1f} ms")
    for result, peak in zip(results, in_fresh_process(_peaks_mb, *sizes), strict=True):
        result.peak_mb = peak
        progress(f"n={result.n:6d} {result.method:13s} {result.pass_:8s} peak {peak:8.1f} MB")
    return results


def ratio_table(results: list[OpResult]) -> str:
    """Markdown table: time, memory and speed-up of each method over SDPA and dense YOSO-E, per n and pass."""
    by_key = {(r.method, r.n, r.pass_): r for r in results}
    lines = [
        "| n | pass | method | time (ms) | peak (MB) | vs SDPA | vs dense YOSO-E |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sdpa, dense = by_key.get(("sdpa", r.n, r.pass_)), by_key.get(("dense_yoso_e", r.n, r.pass_))
        vs_sdpa = f"{sdpa.seconds / r.seconds:.2f}x" if sdpa else "-"
        vs_dense = f"{dense.seconds / r.seconds:.2f}x" if dense else "-"
        lines.append(
            f"| {r.n} | {r.pass_} | {r.method} | {r.seconds * 1e3:.1f} | {r.peak_mb:.0f} | {vs_sdpa} | {vs_dense} |"
        )
    return "\n".join(lines)


def as_records(results: list[OpResult]) -> list[dict]:
    return [asdict(r) for r in results]
