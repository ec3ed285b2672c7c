"""Shared fixtures and helpers. Every test runs on CPU."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

# Property tests draw the same examples on every run (a failure reproduces) and keep no example database; what
# Hypothesis still caches (constants found in the code) goes to a temporary directory, not into the work tree.
settings.register_profile("yoso", derandomize=True, database=None)
settings.load_profile("yoso")
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "yoso-attention-hypothesis"))


# Relative errors against a float64 reference from the same (rounded) inputs, ~3x the largest measured over the
# op tests' sizes, masks, hash types, backward modes and both paths (yoso_expectation / yoso_lsh): outputs
# fp32 8.8e-7, bf16 1.9e-3, fp16 2.1e-4; gradients fp32 9.1e-7, bf16 4.1e-3, fp16 4.8e-4.
OUT_TOL = {torch.float32: 3e-6, torch.bfloat16: 6e-3, torch.float16: 6e-4}
GRAD_TOL = {torch.float32: 3e-6, torch.bfloat16: 1.2e-2, torch.float16: 1.5e-3}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (0 when both are zero)."""
    a, e = actual.detach().double(), expected.detach().double()
    denom = e.norm()
    return float((a - e).norm() / denom) if denom > 0 else float((a - e).norm())


def grad_errors(out, ref, inputs, ref_inputs) -> list[float]:
    """rel_err of d(out . g)/d(inputs) against d(ref . g)/d(ref_inputs) for one random g."""
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, inputs, grad.to(out.dtype))
    want = torch.autograd.grad(ref, ref_inputs, grad)
    return [rel_err(g, w) for g, w in zip(got, want)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["compiled", "numba", "torch"])
def backend(request):
    """Run a test on each kernel set: the compiled CPU kernels, the numba CPU kernels and the portable torch path.
    The compiled ones must exist here: the suite runs on an install that built them (a C++ compiler is part of
    the test set-up), so their absence fails rather than silently testing numba twice."""
    from yoso_attention.ops.backend import _load, _load_errors, use_kernels

    if request.param != "torch":
        assert _load(request.param) is not None, f"{request.param} kernels: {_load_errors.get(request.param)}"
    with use_kernels(request.param):
        yield request.param
