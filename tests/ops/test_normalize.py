import pytest
import torch
import torch.nn.functional as F

from tests.conftest import rel_err
from yoso_attention.ops.normalize import normalize_rows

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_normalize_rows_equals_f_normalize(dtype, backend):
    x = torch.randn(3, 37, 5, 16, dtype=dtype)
    x[0, :4] = 0.0  # zero rows: divided by eps, gradient grad / eps as in F.normalize
    x[1, 2, 1] = 1e-14
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, want = normalize_rows(mine), F.normalize(ref, dim=-1)
    assert out.dtype == dtype and torch.equal(out, want)
    grad = torch.randn_like(out)
    got, expected = torch.autograd.grad(out, mine, grad)[0], torch.autograd.grad(want, ref, grad)[0]
    assert rel_err(got, expected) < (1e-6 if dtype != torch.bfloat16 else 1e-2)


def test_normalize_rows_keeps_its_output_not_its_input():
    x = torch.randn(4, 9, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = normalize_rows(x * 2)
    assert [tuple(t.shape) for t in saved] == [(4, 9, 8), (4, 9, 1)]
    assert saved[0].untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
