"""Property-based tests over shapes, masks and hash parameters."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import rel_err
from yoso_attention.ops import hash_codes, yoso_expectation, yoso_lsh
from yoso_attention.ops.reference import yoso_expectation_reference, yoso_lsh_reference


@st.composite
def problems(draw):
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 20))
    batch = draw(st.integers(1, 3))
    keep = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, n, d, generator=g) for _ in range(3))
    return q, k, v, torch.tensor(keep).expand(batch, n), seed


@settings(max_examples=40, deadline=None)
@given(problems(), st.integers(1, 12))
def test_expectation_matches_reference(problem, tau):
    q, k, v, mask, _ = problem
    out = yoso_expectation(q, k, v, mask, hash_code_len=tau)
    assert torch.isfinite(out).all()
    assert rel_err(out, yoso_expectation_reference(q, k, v, mask, hash_code_len=tau)) < 1e-5
    assert (out[~mask] == 0).all()


@settings(max_examples=40, deadline=None)
@given(problems(), st.integers(1, 8), st.integers(1, 6))
def test_lsh_matches_reference_and_padding_equals_truncation(problem, num_hash, tau):
    q, k, v, mask, seed = problem
    kw = dict(num_hash=num_hash, hash_code_len=tau, fast_hash=False)
    out = yoso_lsh(q, k, v, mask, generator=torch.Generator().manual_seed(seed), **kw)
    q_codes, k_codes = hash_codes(q, k, generator=torch.Generator().manual_seed(seed), **kw)
    assert rel_err(out, yoso_lsh_reference(q, k, v, q_codes, k_codes, mask, hash_code_len=tau)) < 1e-5
    keep = mask[0]
    if keep.any():
        # Gaussian hashing draws per (batch, head), not per token: the unpadded run sees the same functions.
        short = yoso_lsh(q[:, keep], k[:, keep], v[:, keep], generator=torch.Generator().manual_seed(seed), **kw)
        assert rel_err(out[:, keep], short) < 1e-5
