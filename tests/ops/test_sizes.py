"""Every op, forward and backward, over the cross product of odd sequence lengths and head sizes."""

import itertools

import pytest
import torch

from tests.conftest import grad_errors, rel_err
from yoso_attention.ops import hash_codes, yoso_expectation, yoso_lsh
from yoso_attention.ops.reference import yoso_expectation_reference, yoso_lsh_reference

CASES = list(itertools.product([1, 7, 63, 1000], [8, 24, 64, 100]))


@pytest.mark.parametrize("op", ["expectation", "lsh"])
@pytest.mark.parametrize("n,d", CASES, ids=[f"n{n}-d{d}" for n, d in CASES])
def test_every_size_forward_backward_masked_fp32(n, d, op):
    q, k, v = (torch.randn(1, 2, n, d, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(1, 1, n) > 0.25
    mask[..., 0] = True
    inputs = [t.float().requires_grad_() for t in (q, k, v)]
    refs = [t.requires_grad_() for t in (q, k, v)]
    if op == "expectation":
        out = yoso_expectation(*inputs, mask, hash_code_len=8)
        ref = yoso_expectation_reference(*refs, mask, hash_code_len=8)
    else:
        kw = dict(num_hash=6, hash_code_len=8)
        out = yoso_lsh(*inputs, mask, generator=torch.Generator().manual_seed(n + d), **kw)
        q_codes, k_codes = hash_codes(*inputs[:2], generator=torch.Generator().manual_seed(n + d), **kw)
        ref = yoso_lsh_reference(*refs, q_codes, k_codes, mask, hash_code_len=8)
    assert rel_err(out, ref) < 2e-5
    assert max(grad_errors(out, ref, inputs, refs)) < 1e-4
