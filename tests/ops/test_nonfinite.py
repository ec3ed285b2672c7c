"""Non-finite input gives NaN where softmax attention gives NaN, on both paths and in both modes, and masked
positions are ignored whatever they hold. The reference is softmax attention written out (SDPA's math): SDPA's
fused CPU kernel returns finite rows for a NaN query, which is not what its formula gives."""

import pytest
import torch

from yoso_attention.ops import yoso_expectation, yoso_lsh

OPS = {
    "expectation": lambda q, k, v, mask=None: yoso_expectation(q, k, v, mask, hash_code_len=4),
    "lsh": lambda q, k, v, mask=None: yoso_lsh(q, k, v, mask, num_hash=8, hash_code_len=4,
                                               generator=torch.Generator().manual_seed(0)),  # fmt: skip
}
OP = pytest.mark.parametrize("op", OPS, ids=list(OPS))


def qkv():
    return [torch.randn(2, 3, 10, 8, requires_grad=True) for _ in range(3)]


def nan_rows(out):
    return ~torch.isfinite(out).all(-1)  # (..., n): rows holding NaN (ours) or Inf (softmax of an infinite value)


@OP
@pytest.mark.parametrize("where, value", [("q", float("nan")), ("k", float("nan")), ("v", float("inf")),
                                          ("q", float("-inf"))])  # fmt: skip
def test_the_rows_softmax_makes_nonfinite_are_nan(backend, op, where, value):
    q, k, v = qkv()
    bad = {"q": q, "k": k, "v": v}
    with torch.no_grad():
        bad[where][1, 2, 4, 3] = value  # batch 1, head 2, position 4
    out = OPS[op](q, k, v)
    want = nan_rows(torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1) @ v)
    assert torch.equal(nan_rows(out), want) and want.any()
    assert torch.isfinite(out[~want]).all()
    q.retain_grad(), k.retain_grad(), v.retain_grad()
    out.nan_to_num().sum().backward()  # an upstream gradient that is finite everywhere
    for grad in (q.grad, k.grad, v.grad):
        assert torch.isnan(grad[1, 2]).all() and torch.isfinite(grad[0]).all() and torch.isfinite(grad[1, :2]).all()


@OP
def test_whatever_padding_holds_is_ignored(backend, op):
    q, k, v = qkv()
    mask = torch.ones(2, 1, 10, dtype=torch.bool)
    mask[0, :, 7:] = False
    clean = OPS[op](q, k, v, mask)
    dirty = [t.detach().clone() for t in (q, k, v)]
    for t, value in zip(dirty, (float("nan"), float("inf"), float("nan"))):
        t[0, :, 7:] = value
    out = OPS[op](*[t.requires_grad_() for t in dirty], mask)
    assert torch.equal(out, clean) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() and (t.grad[0, :, 7:] == 0).all() for t in dirty)


@OP
def test_padding_stays_zero_beside_a_nan_key(backend, op):
    """A NaN in a real key makes its row's real outputs NaN; the padded positions' outputs stay exact zeros."""
    q, k, v = qkv()
    mask = torch.ones(2, 1, 10, dtype=torch.bool)
    mask[1, :, 7:] = False
    with torch.no_grad():
        k[1, 2, 3, 0] = float("nan")  # batch 1, head 2, a real position
    out = OPS[op](q, k, v, mask)
    assert torch.isnan(out[1, 2, :7]).all() and torch.equal(out[1, 2, 7:], torch.zeros_like(out[1, 2, 7:]))
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1, :2]).all()


@OP
def test_finite_rows_whose_total_overflows_are_not_nan(backend, op):
    """The eager check sums each tensor whole; finite input whose total overflows takes the row-wise rule, which
    leaves every finite row alone."""
    q, k, v = qkv()
    with torch.no_grad():
        v[0, 0, :2] = 3e37  # each row sums to 2.4e38 (finite), the whole of v to inf
    assert torch.isinf(v.detach().sum()) and torch.isfinite(v.detach().sum(-1)).all()
    out = OPS[op](q, k, v)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(v.grad).all()  # (q's and k's gradients scale with v: 1e38 may overflow them, honestly)


def test_the_rule_allocates_nothing_row_sized_for_finite_input_in_eager_mode():
    """On finite CPU input in eager mode the rule costs one sum per tensor: none of the row-wise path's (B, n)
    temporaries, which each call used to leave in the heap between the model's activations."""
    from yoso_attention.bench.timing import live_tensor_peak
    from yoso_attention.ops.nonfinite import poison_gradients, poison_output_

    q, k, v, out = (torch.randn(8, 1024, 32) for _ in range(4))
    mask = torch.ones(8, 1024, dtype=torch.bool)
    assert live_tensor_peak(lambda: poison_output_(out, q, k, v, mask, mask)) <= 64
    assert live_tensor_peak(lambda: poison_gradients((q, k, v), q, k, v, mask, mask)) <= 64
    v[3, 5, 0] = float("nan")  # the row-wise path, as before
    assert torch.isnan(poison_output_(out, q, k, v, mask, mask)[3]).all() and torch.isfinite(out[:3]).all()
