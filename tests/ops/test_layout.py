"""The sampled ops on the models' head-interleaved rows: (batch, heads, n, d) views of a contiguous
(batch, n, heads, d), as a model's projections split into heads. Same values and gradients as on flat rows, outputs
and gradients in the interleaved layout (so that the model's transposes stay views), and nothing copied."""

import pytest
import torch

from tests.ops.test_lsh import gen, kept_for_backward
from yoso_attention.ops import yoso_lsh
from yoso_attention.ops.layout import head_rows, is_interleaved, new_rows, rows_in_layout


def heads_of(rows: torch.Tensor) -> torch.Tensor:
    """(batch, n, heads, d) -> the (batch, heads, n, d) view a model hands the ops."""
    return rows.transpose(1, 2)


def interleaved_inputs(batch=3, n=37, heads=4, d=16):
    rows = [torch.randn(batch, n, heads, d, requires_grad=True) for _ in range(3)]  # q, k, v as the model has them
    return rows, [heads_of(t) for t in rows]


@pytest.mark.parametrize("tau", [6, 1], ids=["sparse", "crowded"])  # query-major kernel; bucket-major, outer products
@pytest.mark.parametrize("recompute", [False, True], ids=["codes", "recompute"])
@pytest.mark.parametrize("lsh_backward", [True, False], ids=["lshbwd", "densebwd"])
@pytest.mark.parametrize("fast_hash", [True, False], ids=["fast", "gauss"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
def test_interleaved_rows_give_the_values_and_gradients_of_flat_rows(masked, fast_hash, lsh_backward, recompute, tau,
                                                                      backend):  # fmt: skip
    """Each kernel on gathered copies of a head's rows (the numba path), or the torch path on flat copies."""
    n = 37 if tau > 1 else 200  # at tau 1, ~100 queries and keys a bucket: the outer-product form
    rows, (q, k, v) = interleaved_inputs(n=n)
    mask = torch.rand(3, 1, n) > 0.3 if masked else None
    options = dict(num_hash=5, hash_code_len=tau, fast_hash=fast_hash, lsh_backward=lsh_backward,
                   recompute_codes=recompute)  # fmt: skip
    grad_layouts = []
    q.register_hook(lambda g: grad_layouts.append(is_interleaved(g)))
    out = yoso_lsh(q, k, v, mask, generator=gen(), **options)
    flat = [t.detach().contiguous().requires_grad_() for t in (q, k, v)]  # (batch, heads, n, d) contiguous
    want = yoso_lsh(*flat, mask, generator=gen(), **options)
    assert is_interleaved(out)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    dout = torch.randn(want.shape)
    out.backward(dout)
    want.backward(dout)
    assert grad_layouts == [True]  # dq reaches the model's view in its layout: no copy on the way back
    for name, got, expected in zip("qkv", rows, flat):
        torch.testing.assert_close(heads_of(got.grad), expected.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_interleaved_rows_are_kept_for_backward_as_they_are(backend):
    """Unpadded, the op keeps the caller's q, k and v (views of the model's projections), not copies of them."""
    rows, (q, k, v) = interleaved_inputs()
    with kept_for_backward() as saved:
        yoso_lsh(q, k, v, num_hash=4, hash_code_len=6, generator=gen())
    storages = {t.untyped_storage().data_ptr() for t in rows}
    kept = [t for t in saved if t.dtype == torch.float32 and t.numel() == q.numel()]
    assert len(kept) == 3 and all(t.untyped_storage().data_ptr() in storages for t in kept)


def test_nonfinite_input_propagates_on_interleaved_rows(backend):
    """The NaN rule per (batch x head) row also in this layout: a NaN query in head 1 of batch 0 makes that one
    output row NaN, and that row's gradients NaN; the other heads and batches stay finite."""
    rows, _ = interleaved_inputs()
    with torch.no_grad():
        rows[0][0, 5, 1, 3] = float("nan")
    q, k, v = (heads_of(t) for t in rows)
    out = yoso_lsh(q, k, v, num_hash=4, hash_code_len=6, generator=gen())
    nan_rows = out.isnan().any(-1)  # (batch, heads, n)
    assert nan_rows[0, 1, 5] and int(nan_rows.sum()) == 1
    out.sum().backward()
    nan_grads = rows[0].grad.isnan().any(-1)  # (batch, n, heads)
    assert nan_grads[0, :, 1].all() and int(nan_grads.sum()) == 37


def test_layout_helpers():
    rows = torch.randn(2, 5, 3, 4)
    view = heads_of(rows)
    assert is_interleaved(view) and head_rows(view) is view
    assert not is_interleaved(view.contiguous()) and head_rows(view.contiguous()).shape == (6, 5, 4)
    fresh = new_rows(view, 7, 2)
    assert fresh.shape == (2, 3, 7, 2) and is_interleaved(fresh) and not fresh._is_view()
    other = torch.randn(2, 3, 5, 4)  # logical shape of view, contiguous memory
    moved = rows_in_layout(other, 4)
    assert is_interleaved(moved) and torch.equal(moved, other)
    assert rows_in_layout(view, 4) is view and rows_in_layout(view, 3).shape == (6, 5, 4)
