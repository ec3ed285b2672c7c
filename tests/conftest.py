"""Shared fixtures and helpers. Every test runs on CPU."""

from __future__ import annotations

import pytest
import torch


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (0 when both are zero)."""
    a, e = actual.detach().double(), expected.detach().double()
    denom = e.norm()
    return float((a - e).norm() / denom) if denom > 0 else float((a - e).norm())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["numba", "torch"])
def backend(request):
    """Run a test on the numba CPU kernels and on the portable torch path."""
    from yoso_attention.ops.backend import torch_only

    if request.param == "torch":
        with torch_only():
            yield request.param
    else:
        yield request.param
