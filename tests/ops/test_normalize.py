import pytest
import torch
import torch.nn.functional as F

from tests.conftest import rel_err
from yoso_attention.ops.normalize import normalize_rows

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_normalize_rows_equals_f_normalize_but_short_rows_pass_no_gradient(dtype, backend):
    x = torch.randn(3, 37, 5, 16, dtype=dtype)
    x[0, :4] = 0.0  # zero rows: F.normalize passes them grad / eps (1e12 x), normalize_rows nothing
    x[1, 2, 3] = 0.0
    x[1, 2, 3, 0] = 1e-20  # a short but non-zero row
    x[2, 5, 1] = 1e-14  # a row of tiny entries, short as well
    x[2, 6, 1, 0] = 1e-14  # a tiny entry in an ordinary row
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, want = normalize_rows(mine), F.normalize(ref, dim=-1)
    assert out.dtype == dtype and torch.equal(out, want)
    grad = torch.randn_like(out)
    got, expected = torch.autograd.grad(out, mine, grad)[0], torch.autograd.grad(want, ref, grad)[0]
    short = x.double().norm(dim=-1) <= 1e-12
    assert short.sum() == 4 * 5 + 2
    assert torch.equal(got[short], torch.zeros_like(got[short]))
    assert rel_err(got[~short], expected[~short]) < (1e-6 if dtype != torch.bfloat16 else 1e-2)


def test_sampled_forward_with_expectation_gradients_keeps_gradients_finite_and_small():
    # A fresh model at the LRA study's tau = 11 has queries that no key collides with (zero attention rows);
    # F.normalize's grad / eps there gave gradient norms of ~1e9 with lsh_backward=False.
    from yoso_attention.models.yoso import YosoConfig, YosoForSequenceClassification

    torch.manual_seed(0)
    cfg = YosoConfig(vocab_size=20, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=300, use_expectation=False, num_hash=4, hash_code_len=11,
                     lsh_backward=False, num_labels=3, hidden_dropout_prob=0.0)  # fmt: skip
    model = YosoForSequenceClassification(cfg)
    model(torch.randint(3, 20, (4, 300)), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    assert torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]) < 100


def test_normalize_rows_keeps_its_output_not_its_input():
    x = torch.randn(4, 9, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = normalize_rows(x * 2)
    assert [tuple(t.shape) for t in saved] == [(4, 9, 8), (4, 9, 1)]
    assert saved[0].untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
