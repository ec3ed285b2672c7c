import pytest
import torch

from tests.conftest import GRAD_TOL, OUT_TOL, grad_errors, rel_err
from yoso_attention.ops import yoso_expectation
from yoso_attention.ops.reference import yoso_expectation_reference

SIZES = [(1, 8), (7, 24), (63, 64), (1000, 100)]


def make_qkv(n, d, dtype, batch=(2, 3), requires_grad=True):
    q, k, v = (torch.randn(*batch, n, d).to(dtype).requires_grad_(requires_grad) for _ in range(3))
    return q, k, v


def make_mask(n, batch=(2, 3)):
    mask = torch.rand(batch[0], 1, n) > 0.3
    mask[..., 0] = True
    return mask


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("n,d", SIZES, ids=[f"n{n}-d{d}" for n, d in SIZES])
def test_forward_backward_match_dense_reference(n, d, dtype, masked, backend):
    q, k, v = make_qkv(n, d, dtype)
    mask = make_mask(n) if masked else None
    out = yoso_expectation(q, k, v, mask, hash_code_len=9)
    # Reference in float64 from the same (rounded) inputs.
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = yoso_expectation_reference(q64, k64, v64, mask, hash_code_len=9)
    assert out.dtype == dtype and out.shape == v.shape
    assert rel_err(out, ref) < OUT_TOL[dtype]
    for name, err in zip("qkv", grad_errors(out, ref, (q, k, v), (q64, k64, v64))):
        assert err < GRAD_TOL[dtype], name


@pytest.mark.parametrize("tau", [1, 4, 16])
def test_exact_gradient_matches_autograd_of_arccos(tau):
    q, k, v = (torch.randn(2, 33, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = yoso_expectation(q.float(), k.float(), v.float(), hash_code_len=tau, exact_grad=True)
    ref = yoso_expectation_reference(q, k, v, hash_code_len=tau, exact_grad=True)
    assert max(grad_errors(out, ref, (q, k, v), (q, k, v))) < 1e-4


def test_exact_gradient_is_finite_at_identical_vectors():
    q = torch.randn(1, 5, 8, requires_grad=True)
    out = yoso_expectation(q, q, torch.randn(1, 5, 8), exact_grad=True)
    (g,) = torch.autograd.grad(out.sum(), q)
    assert torch.isfinite(g).all()


def test_masked_rows_are_zero_and_padding_equals_truncation():
    q, k, v = make_qkv(40, 16, torch.float32, batch=(1, 2))
    mask = torch.zeros(1, 1, 40, dtype=torch.bool)
    mask[..., :25] = True
    out = yoso_expectation(q, k, v, mask)
    short = yoso_expectation(q[..., :25, :], k[..., :25, :], v[..., :25, :])
    assert torch.equal(out[..., 25:, :], torch.zeros_like(out[..., 25:, :]))
    assert rel_err(out[..., :25, :], short) < 1e-6
    out.sum().backward()
    assert torch.equal(k.grad[..., 25:, :], torch.zeros_like(k.grad[..., 25:, :]))
    assert torch.equal(v.grad[..., 25:, :], torch.zeros_like(v.grad[..., 25:, :]))


def test_all_masked_gives_zeros_and_parallel_vectors_give_no_nan():
    q = torch.randn(2, 9, 8)
    out = yoso_expectation(q, q, q, torch.zeros(2, 9, dtype=torch.bool))
    assert torch.equal(out, torch.zeros_like(out))
    # q . k rounds past 1 for identical and for opposite vectors: must be clamped, not NaN.
    big = torch.full((1, 4, 8), 1e3)
    big[0, 2] = -1e3
    assert torch.isfinite(yoso_expectation(big, big, big)).all()


def test_cross_attention_lengths_and_value_dim():
    q, k, v = torch.randn(3, 5, 8), torch.randn(3, 11, 8), torch.randn(3, 11, 6)
    out = yoso_expectation(q, k, v, hash_code_len=5)
    assert out.shape == (3, 5, 6)
    assert rel_err(out, yoso_expectation_reference(q, k, v, hash_code_len=5)) < 1e-5


def test_blocked_computation_matches_one_block(monkeypatch):
    from yoso_attention.ops import expectation

    q, k, v = make_qkv(300, 16, torch.float32, batch=(1, 1), requires_grad=False)
    one_block = yoso_expectation(q, k, v)
    monkeypatch.setattr(expectation, "_BLOCK_ELEMENTS", 16 * 300)  # 16-row blocks
    assert rel_err(yoso_expectation(q, k, v), one_block) < 1e-6
