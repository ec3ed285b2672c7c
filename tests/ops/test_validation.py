import pytest
import torch

from yoso_attention.ops import hash_codes, lsh_cumulation, yoso_expectation, yoso_lsh
from yoso_attention.ops.normalize import normalize_rows

OPS = {
    "expectation": lambda q, k, v, mask=None, **kw: yoso_expectation(q, k, v, mask, **kw),
    "lsh": lambda q, k, v, mask=None, **kw: yoso_lsh(q, k, v, mask, num_hash=4, **kw),
}


def qkv(*shape):
    return torch.randn(*shape), torch.randn(*shape), torch.randn(*shape)


@pytest.mark.parametrize("op", OPS, ids=list(OPS))
@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: (torch.randn(2, 5, 8), torch.randn(3, 5, 8), torch.randn(3, 5, 8)), "k has leading dims \\(3,\\) but q has \\(2,\\)"),
        (lambda: (torch.randn(2, 5, 8), torch.randn(2, 5, 7), torch.randn(2, 5, 8)), "k has head dim 7 but q has 8"),
        (lambda: (torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 6, 8)), "v has length 6 but k has 5"),
        (lambda: (torch.randn(2, 5, 8), torch.randn(2, 5, 8).double(), torch.randn(2, 5, 8)), "k has dtype torch.float64 but q has torch.float32"),
        (lambda: (torch.ones(2, 5, 8, dtype=torch.long),) * 3, "q must be a floating tensor"),
        (lambda: (torch.randn(8),) * 3, r"q must have shape \(..., n, d\) with at least 2 dims"),
        (lambda: (torch.randn(2, 0, 8),) * 3, r"q must have n >= 1 and d >= 1, got shape \(2, 0, 8\)"),
    ],
    ids=["batch", "headdim", "vlen", "dtype", "int", "rank", "empty"],
)
def test_bad_tensors_name_the_argument(op, make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        OPS[op](*make())


@pytest.mark.parametrize("op", OPS, ids=list(OPS))
def test_bad_masks(op):
    q, k, v = qkv(2, 5, 8)
    with pytest.raises(TypeError, match="mask must have dtype torch.bool"):
        OPS[op](q, k, v, torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4\), expected a shape broadcastable to \(2, 5\)"):
        OPS[op](q, k, v, torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("kwargs,match", [
    ({"num_hash": 0}, "num_hash must be an integer >= 1, got 0"),
    ({"hash_code_len": 0}, r"hash_code_len must be an integer in \[1, 20\], got 0"),
    ({"hash_code_len": 21}, "got 21"),
    ({"hash_code_len": 2.5}, "got 2.5"),
])  # fmt: skip
def test_bad_hash_parameters(kwargs, match):
    q, k, v = qkv(1, 5, 8)
    with pytest.raises(ValueError, match=match):
        yoso_lsh(q, k, v, **kwargs)


def test_fast_hash_needs_head_dim_at_least_tau():
    q, k, v = qkv(1, 5, 4)
    with pytest.raises(ValueError, match="fast_hash needs head dim d >= hash_code_len"):
        yoso_lsh(q, k, v, hash_code_len=9)
    assert yoso_lsh(q, k, v, hash_code_len=9, fast_hash=False).shape == v.shape


def test_lsh_cumulation_rejects_out_of_range_and_float_codes():
    v = torch.randn(1, 4, 3)
    good = torch.zeros(1, 4, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"q_codes has values in \[16, 16\], expected \[0, 16\)"):
        lsh_cumulation(good + 16, good, v, hash_code_len=4)
    with pytest.raises(TypeError, match="k_codes must be an integer tensor"):
        lsh_cumulation(good, good.float(), v, hash_code_len=4)
    with pytest.raises(ValueError, match="k_codes has shape"):
        lsh_cumulation(good, good[..., :1], v, hash_code_len=4)
    with pytest.raises(ValueError, match=r"v has shape \(1, 5, 3\), expected \(\*\(1,\), 4, dv\) to match k_codes"):
        lsh_cumulation(good, good, torch.randn(1, 5, 3), hash_code_len=4)  # a row per key
    with pytest.raises(ValueError, match="k_codes is on meta, expected v's device cpu"):
        lsh_cumulation(good, good.to("meta"), v, hash_code_len=4)


def test_hash_codes_checks_its_inputs():
    with pytest.raises(ValueError, match="k has shape"):
        hash_codes(torch.randn(1, 4, 8), torch.randn(1, 4, 6), num_hash=2, hash_code_len=3)
    with pytest.raises(ValueError, match="num_hash"):
        hash_codes(torch.randn(1, 4, 8), torch.randn(1, 4, 8), num_hash=-1, hash_code_len=3)


@pytest.mark.parametrize("op", OPS, ids=list(OPS))
def test_mismatched_devices_are_named(op):
    q, k, v = qkv(1, 5, 8)
    with pytest.raises(ValueError, match="k is on meta but q is on cpu"):
        OPS[op](q, k.to("meta"), v)
    with pytest.raises(ValueError, match="mask is on meta, expected cpu"):
        OPS[op](q, k, v, torch.ones(1, 5, dtype=torch.bool, device="meta"))


DOUBLE_BACKWARD = {
    **{name: lambda x, op=op: op(x, x * 2, x * 3, hash_code_len=4) for name, op in OPS.items()},
    "normalize_rows": lambda x: normalize_rows(x),
}


@pytest.mark.parametrize("op", DOUBLE_BACKWARD, ids=list(DOUBLE_BACKWARD))
def test_double_backward_is_refused_not_silently_wrong(op, backend):
    x = torch.randn(2, 6, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(DOUBLE_BACKWARD[op](x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula was registered"):
        grad.sum().backward()


def test_cumulation_is_linear_in_v_so_its_double_backward_is_exact(backend):
    from yoso_attention.ops.reference import sampled_collision_matrix

    q_codes, k_codes = torch.randint(0, 8, (2, 6, 3)), torch.randint(0, 8, (2, 6, 3))
    x = torch.randn(2, 6, 8, requires_grad=True)
    ref_x = x.detach().double().requires_grad_()
    results = []
    for out in (lsh_cumulation(q_codes, k_codes, x, hash_code_len=3),
                sampled_collision_matrix(q_codes, k_codes).double() @ ref_x):  # fmt: skip
        inp = x if out.dtype == torch.float32 else ref_x
        (grad,) = torch.autograd.grad(out.pow(2).sum(), inp, create_graph=True)
        results.append(torch.autograd.grad(grad.pow(2).sum(), inp)[0])
    assert torch.allclose(results[0].double(), results[1], rtol=1e-5, atol=1e-5)
