"""Bucket tables: scatter keys into 2**tau buckets per hash, gather them back at the queries' codes.

Internal layout: codes (B, m, n) of an integer type (the ops keep them in ``code_dtype``), masks (B, n) bool, both
contiguous; rows (values, q, k and their gradients) float32 in either layout of ``layout``, outputs in the layout
of their rows. The numba kernels are the CPU path; ``kernels_torch`` is the portable path (CUDA, or CPU without
numba), on flat rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import kernels_torch
from .backend import as_numpy, dispatch, fp32_region
from .checks import check_codes, check_float, check_hash_params, check_mask
from .hashing import code_dtype
from .layout import as_flat, flat_rows, from_flat, kernel_rows, new_rows, rows_in_layout


def _cumulate_cpu(kernels, q_codes, k_codes, v, q_mask, k_mask, n_buckets, out) -> torch.Tensor:
    out = new_rows(v, q_codes.shape[2], v.shape[-1]) if out is None else out
    arrays = [as_numpy(t) for t in (q_codes, k_codes, kernel_rows(v), q_mask, k_mask)]
    kernels.lsh_cumulation(*arrays, n_buckets, kernel_rows(out).numpy())
    return out


def _cumulate_torch(q_codes, k_codes, v, q_mask, k_mask, n_buckets, out) -> torch.Tensor:
    rows = from_flat(kernels_torch.cumulate(q_codes, k_codes, as_flat(v), q_mask, k_mask, n_buckets), v)
    return rows if out is None else out.copy_(rows)


def cumulate_rows(q_codes, k_codes, v, q_mask, k_mask, n_buckets: int, out: Tensor | None = None) -> Tensor:
    """``cumulate``'s computation (no autograd), written into ``out`` (fresh rows in v's layout) when given: an op
    that allocates its output before its temporaries (the codes) leaves no hole under the output when it frees
    them, in an allocator that reuses freed space."""
    return dispatch(_cumulate_cpu, _cumulate_torch, q_codes, k_codes, v, q_mask, k_mask, n_buckets, out)


@torch.library.custom_op("yoso::cumulate", mutates_args=())
def cumulate(q_codes: Tensor, k_codes: Tensor, v: Tensor, q_mask: Tensor, k_mask: Tensor, n_buckets: int) -> Tensor:
    """out_i = q_mask_i / m * sum_h sum_j k_mask_j [q_codes[h, i] == k_codes[h, j]] v_j, float32 rows in v's layout.
    Codes (B, m, n) and masks (B, n) contiguous, v (..., S, dv) float32 rows (``layout``). Differentiable in v."""
    return cumulate_rows(q_codes, k_codes, v, q_mask, k_mask, n_buckets)


@cumulate.register_fake
def _(q_codes, k_codes, v, q_mask, k_mask, n_buckets):
    return new_rows(v, q_codes.shape[2], v.shape[-1])


def _cumulate_setup(ctx, inputs, output):
    q_codes, k_codes, v, q_mask, k_mask, ctx.n_buckets = inputs
    ctx.save_for_backward(q_codes, k_codes, q_mask, k_mask)
    ctx.v_rank = v.dim()  # the gradient goes back in v's layout


def _cumulate_backward(ctx, grad):
    q_codes, k_codes, q_mask, k_mask = ctx.saved_tensors
    dv = cumulate(k_codes, q_codes, rows_in_layout(grad, ctx.v_rank), k_mask, q_mask, ctx.n_buckets)
    return None, None, dv, None, None, None


cumulate.register_autograd(_cumulate_backward, setup_context=_cumulate_setup)


def _sparse_buckets(n_keys: int, d: int, n_buckets: int) -> bool:
    """Whether the query-major weighted kernel beats the bucket-major one: with few keys per bucket it skips
    the sorts and the empty buckets; with many, the bucket-major one reuses each key's rows from cache.
    Measured crossover (2 cores, random codes): ~8 keys per bucket at d = 16, ~2 at 32, 1-2 at 64;
    this rule switches at 4, 2 and 1."""
    return n_keys * d <= 64 * n_buckets


def _weighted_cpu(kernels, q_codes, k_codes, q, k, q_norm, k_norm, v, dout, q_mask, k_mask, n_buckets, dq, dk):
    q_inv, k_inv = (as_flat(norm).reciprocal().flatten(1) for norm in (q_norm, k_norm))  # (B, n)
    arrays = [as_numpy(t) for t in (q_codes, k_codes, kernel_rows(q), kernel_rows(k), q_inv, k_inv, kernel_rows(v),
                                    kernel_rows(dout), q_mask, k_mask)]  # fmt: skip
    sparse = _sparse_buckets(k.shape[-2], k.shape[-1], n_buckets)
    kernel = kernels.lsh_weighted_backward_sparse if sparse else kernels.lsh_weighted_backward
    kernel(*arrays, n_buckets, kernel_rows(dq).numpy(), kernel_rows(dk).numpy())
    return dq, dk


def _weighted_torch(q_codes, k_codes, q, k, q_norm, k_norm, v, dout, q_mask, k_mask, n_buckets, dq, dk):
    dqn, dkn = kernels_torch.weighted_backward(q_codes, k_codes, *(as_flat(t) for t in (q, k, q_norm, k_norm, v, dout)),
                                               q_mask, k_mask, n_buckets)  # fmt: skip
    return dq.copy_(from_flat(dqn, q)), dk.copy_(from_flat(dkn, k))


def weighted_backward(q_codes, k_codes, q, k, q_norm, k_norm, v, dout, q_mask, k_mask, n_buckets: int, dq: Tensor,
                      dk: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(dqn, dkn), the gradients w.r.t. the unit rows qn = q / q_norm and kn = k / k_norm: dqn_i = sum_h
    sum_{j collides} (dout_i . v_j) kn_j and dkn_j = sum_h sum_i (...) qn_i, over unmasked pairs (no 1/m and no
    tau/2 factor), written into dq and dk (zeroed rows in the layouts of q and k; see ``cumulate_rows``). Raw
    rows q (..., L, d), k (..., S, d), v, dout of one layout (``layout``) and the norms (..., n, 1) of q and k: the
    CPU kernels form the unit rows as they read them. Part of ``yoso::lsh_backward``: no autograd."""
    return dispatch(_weighted_cpu, _weighted_torch, q_codes, k_codes, q, k, q_norm, k_norm, v, dout, q_mask, k_mask,
                    n_buckets, dq, dk)  # fmt: skip


def flat_mask(mask: torch.Tensor | None, shape: torch.Size, device) -> torch.Tensor:
    """(..., n) bool mask or None -> contiguous (B, n) bool."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device).reshape(-1, shape[-1])
    return mask.reshape(-1, shape[-1]).contiguous()


def lsh_cumulation(
    q_codes: torch.Tensor,
    k_codes: torch.Tensor,
    v: torch.Tensor,
    q_mask: torch.Tensor | None = None,
    k_mask: torch.Tensor | None = None,
    *,
    hash_code_len: int,
) -> torch.Tensor:
    """Sampled YOSO attention from given hash codes, in O(m * n * d).

    out_i = q_mask_i * (1/m) * sum_h sum_j k_mask_j * [q_codes[i, h] == k_codes[j, h]] * v_j

    Args:
        q_codes: (..., L, m) integer codes in [0, 2 ** hash_code_len).
        k_codes: (..., S, m), same leading dims and m.
        v: (..., S, dv) floating values (accumulated in fp32). Differentiable.
        q_mask: bool, True for real queries, broadcastable to (..., L); masked queries get zeros.
        k_mask: bool, True for real keys, broadcastable to (..., S); masked keys are in no bucket.
        hash_code_len: tau, the number of bits of a code.

    Returns:
        (..., L, dv) in v's dtype.
    """
    check_hash_params(None, hash_code_len)
    check_float("v", v)
    for name, t in (("q_codes", q_codes), ("k_codes", k_codes)):
        if t.device != v.device:
            raise ValueError(f"{name} is on {t.device}, expected v's device {v.device}")
    check_codes("q_codes", q_codes, hash_code_len)
    check_codes("k_codes", k_codes, hash_code_len)
    lead, m = q_codes.shape[:-2], q_codes.shape[-1]
    n_q, n_k = q_codes.shape[-2], k_codes.shape[-2]
    if k_codes.shape[:-2] != lead or k_codes.shape[-1] != m:
        raise ValueError(f"k_codes has shape {tuple(k_codes.shape)}, expected (*{tuple(lead)}, S, {m}) like q_codes")
    if v.shape[:-1] != (*lead, n_k):
        raise ValueError(f"v has shape {tuple(v.shape)}, expected (*{tuple(lead)}, {n_k}, dv) to match k_codes")
    q_mask = flat_mask(check_mask("q_mask", q_mask, (*lead, n_q), v.device), (*lead, n_q), v.device)
    k_mask = flat_mask(check_mask("k_mask", k_mask, (*lead, n_k), v.device), (*lead, n_k), v.device)
    small = code_dtype(hash_code_len)
    qc = q_codes.reshape(-1, n_q, m).transpose(1, 2).to(small).contiguous()  # (B, m, L)
    kc = k_codes.reshape(-1, n_k, m).transpose(1, 2).to(small).contiguous()  # (B, m, S)
    with fp32_region(v):
        out = cumulate(qc, kc, flat_rows(v), q_mask, k_mask, 2**hash_code_len)
    return out.reshape(*lead, n_q, v.shape[-1]).to(v.dtype)
