"""YOSO: attention by LSH Bernoulli sampling in linear time (Zeng et al., ICML 2021, Alg. 1).

With m hash functions h shared by queries and keys,
    out_i = mask_i * (1/m) * sum_h sum_j mask_j * [h(q_i) = h(k_j)] * v_j,
an unbiased estimate of YOSO-E computed through one table of 2**tau buckets per hash: O(m n d) time,
O(n d + 2**tau d) memory. Backward (lsh_backward=True) uses the forward's codes, kept or (recompute_codes=True)
rehashed from the kept q, k and hash functions:
    dV = cumulation with queries and keys swapped,
    dQ_i = (tau/2)(1/m) sum_h sum_{j ~ i} (dO_i . v_j) k^_j,  dK likewise,
again without any n x n matrix; lsh_backward=False uses the dense YOSO-E gradient instead.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .backend import fp32_region
from .checks import check_hash_params
from .cumulation import cumulate, weighted_backward
from .expectation import expectation_backward, prepare
from .hashing import draw_hash_functions, hash_pair
from .normalize import unit_rows, unit_rows_backward


class _LSHCumulation(torch.autograd.Function):
    """Differentiable in the raw q, k (normalised inside) and v. Saves q, k, v, the masks and, for the sampled
    backward, the codes in their smallest integer type or (recompute_codes) the hash functions' draw, from which
    the backward rehashes them. The unit rows are recomputed, not kept."""

    @staticmethod
    def forward(ctx, q, k, v, hash_draw, q_mask, k_mask, hashing, lsh_backward, recompute_codes):
        q_codes, k_codes = hash_pair(q, k, hash_draw, *hashing)
        # The draw, (B, parts, 3, d_pad) or (B, d, m tau), does not grow with n; short sequences with the Gaussian
        # hash have fewer code bytes than it, and then keep the codes.
        recompute_codes = recompute_codes and hash_draw.nbytes < q_codes.nbytes + k_codes.nbytes
        if not lsh_backward:
            codes_source = ()  # the dense backward uses no codes
        elif recompute_codes:
            codes_source = (hash_draw,)
        else:
            codes_source = (q_codes, k_codes)
        ctx.save_for_backward(q, k, v, q_mask, k_mask, *codes_source)
        ctx.hashing, ctx.lsh_backward, ctx.recompute_codes = hashing, lsh_backward, recompute_codes
        return cumulate(q_codes, k_codes, v, q_mask, k_mask, 2 ** hashing[1])

    @staticmethod
    @once_differentiable  # the backward runs kernels outside autograd: no double backward
    def backward(ctx, grad):
        with fp32_region(grad):
            return _LSHCumulation._backward(ctx, grad.float().contiguous())

    @staticmethod
    def _backward(ctx, grad):
        q, k, v, q_mask, k_mask, *codes_source = ctx.saved_tensors
        num_hash, tau, _ = ctx.hashing
        (qn, q_norm), (kn, k_norm) = unit_rows(q), unit_rows(k)
        if ctx.lsh_backward:
            q_codes, k_codes = hash_pair(q, k, *codes_source, *ctx.hashing) if ctx.recompute_codes else codes_source
            dv = cumulate(k_codes, q_codes, grad, k_mask, q_mask, 2**tau)
            dqn, dkn = weighted_backward(q_codes, k_codes, qn, kn, v, grad, q_mask, k_mask, 2**tau)
            scale = tau / (2 * num_hash)
            dqn, dkn = dqn.mul_(scale), dkn.mul_(scale)
        else:
            dqn, dkn, dv = expectation_backward(qn, kn, v, grad, q_mask, k_mask, tau, exact=False)
        dq, dk = unit_rows_backward(qn, q_norm, dqn), unit_rows_backward(kn, k_norm, dkn)
        return dq, dk, dv, None, None, None, None, None, None


def yoso_lsh(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    num_hash: int = 64,
    hash_code_len: int = 9,
    fast_hash: bool = True,
    lsh_backward: bool = True,
    generator: torch.Generator | None = None,
    recompute_codes: bool = False,
) -> torch.Tensor:
    """YOSO sampling attention in linear time: an unbiased estimate of ``yoso_expectation``.

    out_i = mask_i * (1/m) * sum_h sum_j mask_j * [h(q_i) == h(k_j)] * v_j over m = num_hash random
    hash_code_len-bit hash functions h shared by queries and keys.

    Args:
        q: (..., L, d) queries; only directions matter (normalised inside).
        k: (..., S, d) keys; same leading dims, dtype and device as q.
        v: (..., S, dv) values.
        mask: bool, True for real tokens, broadcastable to (..., L); applies to queries and keys (needs
            L == S). Masked queries get exact zeros; masked keys are in no bucket.
        num_hash: m >= 1; the estimate's error falls like 1/sqrt(m).
        hash_code_len: tau in [1, 20]; 2**tau buckets per hash.
        fast_hash: Hadamard hash (needs d >= tau after padding d to a power of two) instead of Gaussian.
        lsh_backward: linear-time sampled gradients (True) or the dense YOSO-E gradients (False).
        generator: source of the hash functions; fresh ones on each call without it. The codes used are
            exactly those ``hash_codes(q, k, ..., generator=g)`` returns for ``g`` in the same state.
        recompute_codes: for the sampled backward, keep the hash functions (no n in their shape) instead of
            the 2 * m * n codes, and rehash q and k in backward: less memory for one more hashing, same results.
            Codes are kept anyway where they take fewer bytes (Gaussian hash, n below ~2 * d * tau).

    Returns:
        (..., L, dv) in v's dtype; computed in fp32. O(m * (L + S) * d) time and O(n * d) extra memory,
        forward and backward (lsh_backward=True).
    """
    check_hash_params(num_hash, hash_code_len)
    with fp32_region(q):
        q32, k32, v32, q_mask, k_mask = prepare(q, k, v, mask)
        hashing = (num_hash, hash_code_len, fast_hash)
        draw = draw_hash_functions(q32.shape[0], q32.shape[-1], *hashing, q32.device, generator)
        out = _LSHCumulation.apply(q32, k32, v32, draw, q_mask, k_mask, hashing, bool(lsh_backward),
                                   bool(recompute_codes))
    return out.reshape(*q.shape[:-1], v.shape[-1]).to(v.dtype)
