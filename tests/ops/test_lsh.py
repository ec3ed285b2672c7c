from contextlib import contextmanager

import pytest
import torch

from tests.conftest import GRAD_TOL, OUT_TOL, grad_errors, rel_err
from yoso_attention.bench.timing import allocation_changes, live_tensor_peak
from yoso_attention.ops import hash_codes, lsh_cumulation, yoso_expectation, yoso_lsh
from yoso_attention.ops.reference import sampled_collision_matrix, yoso_lsh_reference

SIZES = [(1, 8), (7, 24), (63, 64), (1000, 100)]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@contextmanager
def kept_for_backward():
    """The list of distinct tensors that autograd keeps for backward inside the block (a tensor saved twice, as
    torch.library's autograd wrapper does with the inputs of an operator whose inputs have a grad_fn, counts once)."""
    saved = []

    def pack(t):
        if not any(t is other for other in saved):
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


@pytest.mark.parametrize("lsh_backward", [True, False], ids=["lshbwd", "densebwd"])
@pytest.mark.parametrize("fast_hash", [True, False], ids=["fast", "gauss"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("n,d", SIZES, ids=[f"n{n}-d{d}" for n, d in SIZES])
def test_forward_backward_match_dense_reference(n, d, dtype, masked, fast_hash, lsh_backward, backend):
    tau, m = 6, 8
    q, k, v = (torch.randn(2, 2, n, d).to(dtype).requires_grad_() for _ in range(3))
    mask = (torch.rand(2, 1, n) > 0.3) if masked else None
    out = yoso_lsh(q, k, v, mask, num_hash=m, hash_code_len=tau, fast_hash=fast_hash,
                   lsh_backward=lsh_backward, generator=gen())  # fmt: skip
    q_codes, k_codes = hash_codes(q, k, num_hash=m, hash_code_len=tau, fast_hash=fast_hash, generator=gen())
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = yoso_lsh_reference(q64, k64, v64, q_codes, k_codes, mask, hash_code_len=tau, lsh_backward=lsh_backward)
    assert out.dtype == dtype and out.shape == v.shape
    assert rel_err(out, ref) < OUT_TOL[dtype]
    for name, err in zip("qkv", grad_errors(out, ref, (q, k, v), (q64, k64, v64))):
        assert err < GRAD_TOL[dtype], name


def test_crowded_buckets_use_outer_product_form_exactly(backend):
    # tau = 1 puts about half of all keys in each bucket, so the kernel takes its d x d form.
    q, k, v = (torch.randn(1, 300, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = yoso_lsh(q.float(), k.float(), v.float(), num_hash=3, hash_code_len=1, generator=gen())
    q_codes, k_codes = hash_codes(q.float(), k.float(), num_hash=3, hash_code_len=1, generator=gen())
    ref = yoso_lsh_reference(q, k, v, q_codes, k_codes, hash_code_len=1)
    assert max(grad_errors(out, ref, (q, k, v), (q, k, v))) < 1e-5


def weighted_sums_case(codes: str):
    """Inputs of the sampled backward's weighted sums (2 rows of 37 queries and 53 keys, 3 hashes, 16 buckets; NaN
    or Inf in the masked rows of q, k, v and dout, which must never be read; "crowded" puts 30 queries and 40 keys
    in bucket 0 under every hash) and what they must give: dq_i = sum_h sum_j [collide, unmasked] (dout_i . v_j) kn_j
    and dk_j likewise, with the unit rows qn = q * q_scale, kn = k * k_scale (any per-row scales); and the
    cumulation of v, (pairs @ v)."""
    n_b, n_q, n_k, d, dv, m = 2, 37, 53, 5, 7, 3
    q_codes, k_codes = torch.randint(0, 16, (n_b, m, n_q)), torch.randint(0, 16, (n_b, m, n_k))
    if codes == "crowded":
        q_codes[:, :, :30], k_codes[:, :, :40] = 0, 0
    q, dout = torch.randn(n_b, n_q, d), torch.randn(n_b, n_q, dv)
    k, v = torch.randn(n_b, n_k, d), torch.randn(n_b, n_k, dv)
    q_scale, k_scale = torch.rand(n_b, n_q) + 0.5, torch.rand(n_b, n_k) + 0.5
    q_mask, k_mask = torch.rand(n_b, n_q) > 0.2, torch.rand(n_b, n_k) > 0.2
    pairs = (q_codes[..., :, None] == k_codes[..., None, :]).double().sum(1)  # (B, nq, nk): collisions over hashes
    pairs = pairs * q_mask[..., None] * k_mask[:, None]
    w = pairs * (dout.double() @ v.double().transpose(1, 2))
    qn, kn = (q * q_scale[..., None]).double(), (k * k_scale[..., None]).double()
    q[~q_mask], k[~k_mask], v[~k_mask], dout[~q_mask] = float("nan"), float("inf"), float("nan"), float("nan")
    inputs = dict(q_codes=q_codes, k_codes=k_codes, q=q, k=k, q_scale=q_scale, k_scale=k_scale, v=v, dout=dout,
                  q_mask=q_mask, k_mask=k_mask)  # fmt: skip
    return inputs, pairs @ v.double().nan_to_num() / m, w @ kn, w.transpose(1, 2) @ qn


def weighted_sums(kernel: str, x: dict, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """(dq, dk) that ``kernel`` of the active CPU kernel set writes for the inputs x of ``weighted_sums_case``, with
    q, k, v and dout passed as rows(t) (B, n, width) -> (batch, n, heads, width), the gradients in that layout."""
    from yoso_attention.ops.backend import cpu_kernels

    q, k, v, dout = (rows(x[name]) for name in ("q", "k", "v", "dout"))
    dq, dk = torch.zeros(q.shape), torch.zeros(k.shape)
    arrays = [t.numpy() for t in (x["q_codes"].to(torch.int16), x["k_codes"].to(torch.int16), q, k, x["q_scale"],
                                  x["k_scale"], v, dout, x["q_mask"], x["k_mask"])]  # fmt: skip
    getattr(cpu_kernels(x["v"]), kernel)(*arrays, 16, dq.numpy(), dk.numpy())
    return dq, dk


@pytest.mark.parametrize("codes", ["random", "crowded"])
@pytest.mark.parametrize("kernel", ["lsh_weighted_backward", "lsh_weighted_backward_sparse"], ids=["bucket_major",
                                                                                                   "query_major"])
@pytest.mark.parametrize("kernel_set", ["compiled", "numba"])
def test_weighted_kernels_match_the_dense_formula(kernel, codes, kernel_set):
    """Both CPU kernels of each set, also where a bucket is crowded enough for their outer-product form; the unit
    rows are formed from raw rows and inverse norms as the kernels read them."""
    from yoso_attention.ops.backend import use_kernels

    x, _, dq_want, dk_want = weighted_sums_case(codes)
    one_head = lambda t: t[:, :, None]  # (B, n, width) -> (B, n, heads = 1, width)
    with use_kernels(kernel_set):
        dq, dk = weighted_sums(kernel, x, one_head)
    assert rel_err(dq, one_head(dq_want)) < 1e-6 and rel_err(dk, one_head(dk_want)) < 1e-6


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 5])
@pytest.mark.parametrize("kernel", ["lsh_weighted_backward", "lsh_weighted_backward_sparse"], ids=["bucket_major",
                                                                                                   "query_major"])
def test_compiled_weighted_kernels_gather_interleaved_heads_on_any_number_of_threads(kernel, threads):
    """Rows (batch 1, n, heads 2, width), as models pass them: each head is gathered into scratch that the calling
    thread made for every thread before the parallel region; one thread, or more threads than rows, gives the
    dense formula."""
    from yoso_attention.ops.backend import use_kernels

    x, _, dq_want, dk_want = weighted_sums_case("crowded")
    as_heads = lambda t: t.transpose(0, 1)[None].contiguous()  # (B = heads, n, width) -> (1, n, heads, width)
    with use_kernels("compiled"), torch_threads(threads):
        dq, dk = weighted_sums(kernel, x, as_heads)
    assert rel_err(dq, as_heads(dq_want)) < 1e-6 and rel_err(dk, as_heads(dk_want)) < 1e-6


@pytest.mark.parametrize("fast_hash", [True, False], ids=["fast", "gauss"])
def test_compiled_kernels_give_the_same_bits_on_any_number_of_threads(fast_hash):
    """A row is one thread's work with the scratch the calling thread made for it: on 1, 2 or 7 threads (more than
    the rows) the sampled op's and YOSO-E's outputs and gradients are the same bits."""
    from yoso_attention.ops.backend import use_kernels

    q, k, v = (torch.randn(2, 3, 45, 16) for _ in range(3))
    mask, grad = torch.rand(2, 1, 45) > 0.2, torch.randn(2, 3, 45, 16)
    ops = [lambda *x: yoso_lsh(*x, mask, num_hash=5, hash_code_len=6, fast_hash=fast_hash, generator=gen(3)),
           lambda *x: yoso_expectation(*x, mask, hash_code_len=6)]  # fmt: skip

    def results(threads):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        with use_kernels("compiled"), torch_threads(threads):
            outs = [op(*inputs) for op in ops]
            return [t for out in outs for t in (out, *torch.autograd.grad(out, inputs, grad))]

    one = results(1)
    for threads in (2, 7):
        assert all(torch.equal(a, b) for a, b in zip(one, results(threads)))


@pytest.mark.parametrize("codes", ["random", "crowded"])
@pytest.mark.parametrize("form", ["pairs", "tables"])
def test_torch_path_forms_match_the_dense_formula(monkeypatch, form, codes):
    """The torch path (CUDA, CPU without numba) sums colliding pairs or goes through bucket tables, whichever costs
    less for a group of hashes; each form, forced, must give the definition, also with tiny scratch budgets that
    split the hashes into groups and the pairs into chunks smaller than a crowded bucket's run."""
    from yoso_attention.ops import kernels_torch

    monkeypatch.setattr(kernels_torch._Collisions, "cheaper_than_tables", lambda *_: form == "pairs")
    monkeypatch.setattr(kernels_torch, "SCRATCH_ELEMENTS", 200)
    monkeypatch.setattr(kernels_torch, "INDEX_ENTRIES", 150)
    x, out_want, dq_want, dk_want = weighted_sums_case(codes)
    codes_and_masks = (x["q_codes"], x["k_codes"], x["v"], x["q_mask"], x["k_mask"], 16)
    assert rel_err(kernels_torch.cumulate(*codes_and_masks), out_want) < 1e-6
    q_norm, k_norm = 1 / x["q_scale"][..., None], 1 / x["k_scale"][..., None]
    dq, dk = kernels_torch.weighted_backward(x["q_codes"], x["k_codes"], x["q"], x["k"], q_norm, k_norm, x["v"],
                                             x["dout"], x["q_mask"], x["k_mask"], 16)  # fmt: skip
    assert rel_err(dq, dq_want) < 1e-6 and rel_err(dk, dk_want) < 1e-6


@pytest.mark.parametrize("codes", ["random", "crowded"])
def test_torch_path_enumerates_each_colliding_unmasked_pair_once_per_hash(codes):
    """The pair form's search: masked keys are in no bucket and masked queries collide with nothing (they would
    cost work, not change sums), and chunks smaller than a bucket's run still give every pair exactly once."""
    from yoso_attention.ops.kernels_torch import _Collisions

    x, *_ = weighted_sums_case(codes)
    q_codes, k_codes, q_mask, k_mask = x["q_codes"], x["k_codes"], x["q_mask"], x["k_mask"]
    (n_b, m, n_q), n_k = q_codes.shape, k_codes.shape[2]
    found = _Collisions(q_codes, k_codes, q_mask, k_mask, 16)
    got = sorted(pair for q_rows, k_rows in found.chunks(7) for pair in zip(q_rows.tolist(), k_rows.tolist()))
    want = sorted((b * n_q + i, b * n_k + j) for b in range(n_b) for h in range(m) for i in range(n_q)
                  for j in range(n_k) if q_mask[b, i] and k_mask[b, j] and q_codes[b, h, i] == k_codes[b, h, j])
    assert got == want and found.total == len(want)


def test_registered_lsh_backward_matches_its_definition_for_other_lengths_and_masks(backend):
    """torch.ops.yoso.lsh_backward as an operator, beyond what yoso_lsh's self-attention reaches (L != S, query and
    key masks apart): dv_j = k_mask_j / m sum_h sum_i q_mask_i [collide] dout_i, and dq the normalisation's
    derivative of dqn_i = tau / (2 m) sum_h sum_j [collide, unmasked] (dout_i . v_j) kn_j (dk alike)."""
    from yoso_attention.ops.hashing import code_dtype

    n_b, n_q, n_k, d, dv, m, tau = 2, 37, 53, 5, 7, 3, 4
    q, k = torch.randn(n_b, n_q, d), torch.randn(n_b, n_k, d)
    v, dout = torch.randn(n_b, n_k, dv), torch.randn(n_b, n_q, dv)
    q_codes, k_codes = (torch.randint(0, 2**tau, (n_b, m, n)).to(code_dtype(tau)) for n in (n_q, n_k))
    q_mask, k_mask = torch.rand(n_b, n_q) > 0.3, torch.rand(n_b, n_k) > 0.3
    dq, dk, dv_got = torch.ops.yoso.lsh_backward(q, k, v, dout, q_codes, k_codes, None, None, q_mask, k_mask, m, tau, False)

    pairs = (q_codes[..., :, None] == k_codes[..., None, :]).double().sum(1) * q_mask[..., None] * k_mask[:, None]
    w = pairs * (dout.double() @ v.double().transpose(1, 2)) * tau / (2 * m)  # (B, L, S)
    qn, kn = (x.double() / x.double().norm(dim=-1, keepdim=True) for x in (q, k))

    def through_norm(xn, x, grad):  # (grad - xn (xn . grad)) / |x|
        return (grad - xn * (xn * grad).sum(-1, keepdim=True)) / x.double().norm(dim=-1, keepdim=True)

    assert rel_err(dv_got, pairs.transpose(1, 2) @ dout.double() / m) < 1e-6
    assert rel_err(dq, through_norm(qn, q, w @ kn)) < 1e-6
    assert rel_err(dk, through_norm(kn, k, w.transpose(1, 2) @ qn)) < 1e-6


@pytest.mark.parametrize("num_hash", [1, 4, 5], ids=lambda m: f"m{m}")  # odd m: the kernel's pairs have a tail
def test_lsh_cumulation_matches_definition(backend, num_hash):
    q_codes = torch.randint(0, 16, (3, 50, num_hash))
    k_codes = torch.randint(0, 16, (3, 70, num_hash))
    v = torch.randn(3, 70, 7, requires_grad=True)
    q_mask, k_mask = torch.rand(3, 50) > 0.2, torch.rand(3, 70) > 0.2
    out = lsh_cumulation(q_codes, k_codes, v, q_mask, k_mask, hash_code_len=4)
    ref = sampled_collision_matrix(q_codes, k_codes, q_mask, k_mask) @ v
    assert rel_err(out, ref) < 1e-6
    grad = torch.randn_like(out)
    assert rel_err(torch.autograd.grad(out, v, grad)[0], torch.autograd.grad(ref, v, grad)[0]) < 1e-6


def test_generator_reproduces_and_shares_codes_with_hash_codes():
    q, k, v = torch.randn(2, 30, 16), torch.randn(2, 30, 16), torch.randn(2, 30, 16)
    a = yoso_lsh(q, k, v, num_hash=4, hash_code_len=5, generator=gen(3))
    b = yoso_lsh(q, k, v, num_hash=4, hash_code_len=5, generator=gen(3))
    c = yoso_lsh(q, k, v, num_hash=4, hash_code_len=5, generator=gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    q_codes, k_codes = hash_codes(q, k, num_hash=4, hash_code_len=5, generator=gen(3))
    assert q_codes.shape == (2, 30, 4) and q_codes.dtype == torch.int32
    assert int(q_codes.min()) >= 0 and int(q_codes.max()) < 32
    assert torch.equal(a, lsh_cumulation(q_codes, k_codes, v, hash_code_len=5))
    # Fresh hash functions on each call without a generator.
    assert not torch.equal(yoso_lsh(q, k, v, num_hash=4, hash_code_len=5), yoso_lsh(q, k, v, num_hash=4, hash_code_len=5))


def test_queries_and_keys_get_their_own_codes():
    q, k = torch.randn(1, 64, 16), torch.randn(1, 64, 16)
    q_codes, k_codes = hash_codes(q, k, num_hash=8, hash_code_len=8, generator=gen())
    assert not torch.equal(q_codes, k_codes)
    same_q, same_k = hash_codes(q, q, num_hash=8, hash_code_len=8, generator=gen())
    assert torch.equal(same_q, same_k)


@pytest.mark.parametrize("fast_hash", [True, False], ids=["fast", "gauss"])
@pytest.mark.parametrize("d, tau", [(40, 7), (16, 7), (11, 5), (16, 16)], ids=lambda x: str(x))
@pytest.mark.parametrize("kernel_set", ["compiled", "numba"])
def test_cpu_kernels_and_torch_path_give_the_same_codes(fast_hash, d, tau, kernel_set):
    """d = 16 after padding has its own numba fast-hash path (one column in registers). Codes lie in [0, 2**tau)
    with the top bit used (tau 16 needs more than int16); a zero row's projections are 0, not positive: code 0."""
    from yoso_attention.ops.backend import torch_only, use_kernels

    q, k = torch.randn(3, 300, d), torch.randn(3, 300, d)
    q[1, 5] = 0.0
    with use_kernels(kernel_set):
        fast = hash_codes(q, k, num_hash=9, hash_code_len=tau, fast_hash=fast_hash, generator=gen())
    with torch_only():
        slow = hash_codes(q, k, num_hash=9, hash_code_len=tau, fast_hash=fast_hash, generator=gen())
    for a, b in zip(fast, slow):
        assert (a == b).float().mean() > 0.999  # differ only where a projection rounds to ~0
        assert min(int(a.min()), int(b.min())) >= 0 and 2 ** (tau - 1) <= int(a.max()) < 2**tau
    assert not fast[0][1, 5].any() and not slow[0][1, 5].any()


@pytest.mark.parametrize("fast_hash", [True, False], ids=["fast", "gauss"])
def test_rows_hashed_in_chunks_get_the_codes_of_one_pass(monkeypatch, fast_hash):
    """The torch path projects a few (batch x head) rows at a time to bound its memory (the CPU kernels project a
    block of rows at a time in cache); the codes must not change. 7 rows in chunks of 2 (the last one short)."""
    from yoso_attention.ops import hashing
    from yoso_attention.ops.backend import torch_only


    q, k = torch.randn(7, 100, 16), torch.randn(7, 100, 16)
    with torch_only():
        whole = hash_codes(q, k, num_hash=6, hash_code_len=5, fast_hash=fast_hash, generator=gen())
        monkeypatch.setattr(hashing, "PROJECTION_CHUNK_FLOATS", 2 * 100 * 30)
        assert len(hashing._row_chunks(7, 100, 30)) == 4
        chunked = hash_codes(q, k, num_hash=6, hash_code_len=5, fast_hash=fast_hash, generator=gen())
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)


def test_padding_equals_truncation_with_the_same_hash_functions():
    q, k, v = (torch.randn(1, 2, 50, 16, requires_grad=True) for _ in range(3))
    mask = torch.zeros(1, 1, 50, dtype=torch.bool)
    mask[..., :31] = True
    out = yoso_lsh(q, k, v, mask, num_hash=16, hash_code_len=4, generator=gen())
    short = yoso_lsh(*(t[..., :31, :] for t in (q, k, v)), num_hash=16, hash_code_len=4, generator=gen())
    assert torch.equal(out[..., 31:, :], torch.zeros_like(out[..., 31:, :]))
    assert rel_err(out[..., :31, :], short) < 1e-6
    out.sum().backward()
    for t in (q, k, v):
        assert torch.equal(t.grad[..., 31:, :], torch.zeros_like(t.grad[..., 31:, :]))


def test_all_masked_rows_are_zero_without_nan():
    q = torch.randn(2, 9, 8, requires_grad=True)
    out = yoso_lsh(q, q, q, torch.zeros(2, 9, dtype=torch.bool), num_hash=4, hash_code_len=3)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("fast_hash", [True, False], ids=["fast", "gauss"])
def test_error_to_expectation_falls_like_inverse_sqrt_num_hash(fast_hash):
    q, k, v = torch.randn(4, 128, 32), torch.randn(4, 128, 32), torch.randn(4, 128, 32)
    q = q + 0.8 * k  # correlated pairs: collision probabilities well above 2**-tau
    expected = yoso_expectation(q, k, v, hash_code_len=4)

    def mean_error(m):
        errs = [rel_err(yoso_lsh(q, k, v, num_hash=m, hash_code_len=4, fast_hash=fast_hash, generator=gen(s)),
                        expected) for s in range(4)]  # fmt: skip
        return sum(errs) / len(errs)

    ratio = mean_error(16) / mean_error(256)
    assert 3.0 < ratio < 5.3  # sqrt(256 / 16) = 4


@pytest.mark.parametrize("fast_hash", [True, False], ids=["fast", "gauss"])
@pytest.mark.parametrize("cos", [-0.5, 0.0, 0.5, 0.9])
def test_collision_rate_matches_angle_formula(fast_hash, cos):
    tau, d, draws = 3, 32, 4000
    x = torch.randn(d)
    x = x / x.norm()
    y = torch.randn(d)
    y = y - (y @ x) * x
    y = cos * x + (1 - cos**2) ** 0.5 * y / y.norm()
    q_codes, k_codes = hash_codes(x.expand(1, 1, d), y.expand(1, 1, d), num_hash=draws, hash_code_len=tau,
                                  fast_hash=fast_hash, generator=gen())  # fmt: skip
    rate = (q_codes == k_codes).float().mean().item()
    expected = (1 - torch.arccos(torch.tensor(cos)).item() / torch.pi) ** tau
    sigma = (expected * (1 - expected) / draws) ** 0.5
    # The fast hash's projections within one part are not independent: allow a little more than 4 sigma.
    assert abs(rate - expected) < 4 * sigma + (0.01 if fast_hash else 0.0)


@pytest.mark.parametrize("batch", [1, 2], ids=["b1", "b2"])
def test_model_layout_views_give_the_same_results_as_contiguous_input(backend, batch):
    """Models pass transposed views of (batch, n, heads, d); the ops must treat them like contiguous data."""
    base = [torch.randn(batch, 37, 3, 8) for _ in range(3)]
    views = [t.transpose(1, 2).requires_grad_() for t in (b.clone() for b in base)]  # strided (batch, heads, n, d)
    dense = [t.transpose(1, 2).contiguous().requires_grad_() for t in base]
    mask = torch.rand(batch, 1, 37) > 0.2
    outs = [yoso_lsh(*qkv, mask, num_hash=6, hash_code_len=4, generator=gen(1)) for qkv in (views, dense)]
    assert torch.equal(outs[0], outs[1])
    grad = torch.randn_like(outs[0])
    for a, b in zip(torch.autograd.grad(outs[0], views, grad), torch.autograd.grad(outs[1], dense, grad)):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("tau,code_dtype", [(8, torch.uint8), (11, torch.int16)], ids=["uint8", "int16"])
def test_sampled_backward_keeps_small_codes_and_no_unit_rows(tau, code_dtype):
    """What stays alive per call until backward: q, k, v (fp32), the masks and the codes in their smallest type."""
    batch, heads, n, d, m = 2, 3, 100, 16, 8
    q, k, v = (torch.randn(batch, heads, n, d, requires_grad=True) for _ in range(3))
    with kept_for_backward() as saved:
        out = yoso_lsh(q, k, v, torch.rand(batch, 1, n) > 0.2, num_hash=m, hash_code_len=tau, generator=gen())
    assert [tuple(t.shape) for t in saved if t.is_floating_point()] == [(batch * heads, n, d)] * 3  # no unit rows
    codes = [t for t in saved if not t.is_floating_point() and t.dtype != torch.bool]
    assert [(t.dtype, tuple(t.shape)) for t in codes] == [(code_dtype, (batch * heads, m, n))] * 2
    out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("recompute", [False, True], ids=["kept", "recomputed"])
def test_sampled_backward_allocates_its_three_gradients_and_little_else(recompute):
    """The backward forms the unit rows as its kernels read them, normalises the gradients in place and passes
    the output's gradient through the NaN rule uncopied: at its peak it holds dq, dk, dv (3 blocks of q's size)
    and row-sized scraps. It held 8 blocks before (unit rows, their gradients, a copy of the output gradient)."""
    q, k, v = (torch.randn(4, 1024, 32, requires_grad=True) for _ in range(3))
    out = yoso_lsh(q, k, v, num_hash=8, hash_code_len=9, generator=gen(), recompute_codes=recompute)
    grad = torch.randn_like(out)
    codes = 2 * 4 * 8 * 1024 * 2  # q's and k's int16 codes: rehashed, or counted where the backward first reads them
    assert live_tensor_peak(lambda: out.backward(grad)) < 3 * q.nbytes + 2 * codes + q.nbytes / 4
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def created_sizes(fn) -> list[int]:
    """The sizes in bytes of the torch allocations fn() makes, in the order it makes them."""
    return [size for size in allocation_changes(fn) if size > 0]


@pytest.mark.parametrize("recompute", [False, True], ids=["kept", "recomputed"])
def test_results_are_allocated_before_the_codes(recompute):
    """The output (forward) and the three gradients (backward) come before the codes, which are freed first: freed
    temporaries under a kept tensor would leave holes in the heap that the next activation does not fit."""
    q, k, v = (torch.randn(4, 1024, 32, requires_grad=True) for _ in range(3))
    codes = 4 * 8 * 1024 * 2  # int16 codes of q or of k
    forward = created_sizes(lambda: yoso_lsh(q, k, v, num_hash=8, hash_code_len=9, generator=gen(),
                                             recompute_codes=recompute))  # fmt: skip
    assert forward.index(q.nbytes) < forward.index(codes)
    out = yoso_lsh(q, k, v, num_hash=8, hash_code_len=9, generator=gen(), recompute_codes=recompute)
    backward = created_sizes(lambda: out.backward(torch.ones_like(out)))
    assert backward.count(q.nbytes) >= 3
    if recompute:  # the rehashed codes come after dq, dk, dv
        assert [i for i, size in enumerate(backward) if size == q.nbytes][2] < backward.index(codes)


@pytest.mark.parametrize("fast_hash", [True, False], ids=["fast", "gauss"])
def test_recomputed_codes_give_the_same_gradients_and_keep_only_the_generator_state(fast_hash, backend):
    """recompute_codes keeps the generator's state from before the draw (a few KB, no n in its shape) instead of
    the codes, and draws and hashes again in backward: bit-identical outputs and gradients."""
    batch, heads, n, d, m, tau = 2, 3, 500, 16, 8, 6  # n > 2 d tau: the Gaussian draw is smaller than the codes
    q, k, v = (torch.randn(batch, heads, n, d) for _ in range(3))
    mask = torch.rand(batch, 1, n) > 0.2
    runs = []
    for recompute in (False, True):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        with kept_for_backward() as saved:
            out = yoso_lsh(*leaves, mask, num_hash=m, hash_code_len=tau, fast_hash=fast_hash, generator=gen(),
                           recompute_codes=recompute)  # fmt: skip
        out.backward(torch.randn(out.shape, generator=gen(1)))
        runs.append((out, [t.grad for t in leaves], saved))
    (out, grads, saved), (out_r, grads_r, saved_r) = runs
    assert torch.equal(out, out_r) and all(torch.equal(a, b) for a, b in zip(grads, grads_r))
    assert not [t for t in saved_r if t.dim() == 3 and not t.is_floating_point()]  # no codes kept
    assert not [t for t in saved_r if t.is_floating_point() and t.shape[1] != n]  # nor the draw
    state = [t for t in saved_r if t.dim() == 1]
    assert len(state) == 1 and torch.equal(state[0], gen().get_state())  # the state the draw came from


def test_recomputed_codes_from_the_global_generator_give_the_same_gradients():
    """Without a generator the hash functions come from torch's global one: the backward draws them again from
    its state, whatever the global generator did in between."""
    q, k, v = (torch.randn(2, 3, 400, 16) for _ in range(3))
    grads = []
    for recompute in (False, True):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        torch.manual_seed(3)
        out = yoso_lsh(*leaves, num_hash=8, hash_code_len=7, recompute_codes=recompute)
        torch.randn(1000)  # the global generator moves on before the backward
        out.backward(torch.ones_like(out))
        grads.append([t.grad for t in leaves])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_no_generator_state_where_the_device_has_no_default_generator():
    """Then recompute_codes keeps the draw, as under tracing (meta tensors: no per-device generators)."""
    from yoso_attention.ops.hashing import generator_state

    assert generator_state(torch.device("meta"), None) is None
    assert torch.equal(generator_state(torch.device("cpu"), None), torch.default_generator.get_state())


def test_recompute_codes_keeps_the_codes_when_they_are_smaller_than_the_generator_state():
    q, k, v = (torch.randn(2, 50, 16, requires_grad=True) for _ in range(3))
    with kept_for_backward() as saved:
        yoso_lsh(q, k, v, num_hash=8, hash_code_len=6, fast_hash=False, generator=gen(), recompute_codes=True)
    # codes 2 x (2, 8, 50) bytes; the CPU generator's state is 5 KB
    assert [(t.dtype, tuple(t.shape)) for t in saved if t.dtype == torch.uint8] == [(torch.uint8, (2, 8, 50))] * 2
