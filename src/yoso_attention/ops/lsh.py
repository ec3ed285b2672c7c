"""YOSO: attention by LSH Bernoulli sampling in linear time (Zeng et al., ICML 2021, Alg. 1).

With m hash functions h shared by queries and keys,
    out_i = mask_i * (1/m) * sum_h sum_j mask_j * [h(q_i) = h(k_j)] * v_j,
an estimate of YOSO-E (unbiased with Gaussian hash functions) computed through one table of 2**tau buckets per
hash: O(m n d) time, O(n d + 2**tau d) memory. Backward (lsh_backward=True) uses the forward's codes, kept or (recompute_codes=True)
rehashed from the kept q, k and hash functions:
    dV = cumulation with queries and keys swapped,
    dQ_i = (tau/2)(1/m) sum_h sum_{j ~ i} (dO_i . v_j) k^_j,  dK likewise,
again without any n x n matrix; lsh_backward=False uses the dense YOSO-E gradient instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import fp32_region, is_traced
from .checks import check_hash_params
from .cumulation import cumulate_rows, weighted_backward
from .expectation import expectation_backward, prepare
from .hashing import code_dtype, draw_hash_functions, generator_state, hash_pair, redraw_hash_functions
from .layout import as_flat, from_flat, from_kernel_rows, head_rows, kernel_rows, new_rows, num_rows, rows_in_layout
from .nonfinite import poison_gradients, poison_output_
from .normalize import row_norms, unit_rows_backward


@torch.library.custom_op("yoso::lsh", mutates_args=())
def lsh(q: Tensor, k: Tensor, v: Tensor, hash_draw: Tensor, draw_state: Tensor | None, q_mask: Tensor,
        k_mask: Tensor, num_hash: int, tau: int, fast: bool, lsh_backward: bool, recompute_codes: bool
        ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Sampled YOSO of q (..., L, d), k (..., S, d) (raw rows) and v (..., S, dv), float32 rows of one layout (see
    ``layout``), under the hash functions of ``hash_draw``: (out (..., L, dv) in that layout, q_codes (B, m, L),
    k_codes (B, m, S)). Differentiable in q, k and v; draw_state (the generator state the draw came from, or None)
    and the last two arguments only choose what the backward does and keeps."""
    out = new_rows(v, q.shape[-2], v.shape[-1])  # before the codes, which the caller may drop (``cumulate_rows``)
    q_codes, k_codes = hash_pair(q, k, hash_draw, num_hash, tau, fast)
    return cumulate_rows(q_codes, k_codes, v, q_mask, k_mask, 2**tau, out), q_codes, k_codes


@lsh.register_fake
def _(q, k, v, hash_draw, draw_state, q_mask, k_mask, num_hash, tau, fast, lsh_backward, recompute_codes):
    dtype = code_dtype(tau)
    return (new_rows(v, q.shape[-2], v.shape[-1]), q.new_empty((num_rows(q), num_hash, q.shape[-2]), dtype=dtype),
            k.new_empty((num_rows(k), num_hash, k.shape[-2]), dtype=dtype))  # fmt: skip


@torch.library.custom_op("yoso::lsh_backward", mutates_args=())
def lsh_backward(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, q_codes: Tensor | None, k_codes: Tensor | None,
                 hash_draw: Tensor | None, draw_state: Tensor | None, q_mask: Tensor, k_mask: Tensor, num_hash: int,
                 tau: int, fast: bool) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(dq, dk, dv) of ``lsh`` from the forward's codes, or (codes None) from codes rehashed under ``hash_draw`` (or,
    without it, the draw made again from the generator state ``draw_state``), in linear time: dv is the cumulation
    with queries and keys swapped, dq_i = (tau/2)(1/m) sum_h sum_{j ~ i} (dO_i . v_j) k^_j (and dk likewise)
    through the unit rows. q, k, v, dout: float32 rows of one layout
    (``layout``); the gradients come in that layout."""
    # The gradients first, the codes to rehash after them (see ``cumulate_rows``).
    dq, dk = (new_rows(x, x.shape[-2], x.shape[-1], zeros=True) for x in (q, k))
    dv = new_rows(dout, k.shape[-2], dout.shape[-1])
    if q_codes is None or k_codes is None:
        if hash_draw is None:
            hash_draw = redraw_hash_functions(draw_state, num_rows(q), q.shape[-1], num_hash, tau, fast, q.device)
        q_codes, k_codes = hash_pair(q, k, hash_draw, num_hash, tau, fast)
    q_norm, k_norm = (from_kernel_rows(row_norms(kernel_rows(x)), x) for x in (q, k))  # (..., n, 1), unit rows unstored
    cumulate_rows(k_codes, q_codes, dout, k_mask, q_mask, 2**tau, dv)
    weighted_backward(q_codes, k_codes, q, k, q_norm, k_norm, v, dout, q_mask, k_mask, 2**tau, dq, dk)
    scale = tau / (2 * num_hash)
    dq = unit_rows_backward(q, q_norm, dq.mul_(scale), in_place=True, raw=True)
    dk = unit_rows_backward(k, k_norm, dk.mul_(scale), in_place=True, raw=True)
    return dq, dk, dv


@lsh_backward.register_fake
def _(q, k, v, dout, q_codes, k_codes, hash_draw, draw_state, q_mask, k_mask, num_hash, tau, fast):
    return tuple(new_rows(x, x.shape[-2], x.shape[-1]) for x in (q, k, v))


def _lsh_setup(ctx, inputs, output):
    """Keeps q, k, v, the masks and, for the sampled backward, the codes in their smallest integer type or
    (recompute_codes) what the backward rehashes them from: the generator state the hash functions were drawn
    from, or (where there is none, as under tracing) the draw itself. The unit rows are recomputed, not kept."""
    q, k, v, hash_draw, draw_state, q_mask, k_mask, num_hash, tau, fast, lsh_bwd, recompute = inputs
    _, q_codes, k_codes = output
    # The state is a few KB; the draw, (B, parts, 3, d_pad) or (B, d, m tau), does not grow with n either. Short
    # sequences can have fewer code bytes than either, and then keep the codes.
    source = hash_draw if draw_state is None else draw_state
    recompute = recompute and _bytes(source) < _bytes(q_codes) + _bytes(k_codes)
    codes_source = () if not lsh_bwd else (source,) if recompute else (q_codes, k_codes)
    ctx.save_for_backward(q, k, v, q_mask, k_mask, *codes_source)
    ctx.hashing, ctx.lsh_backward, ctx.recompute = (num_hash, tau, fast), lsh_bwd, recompute
    ctx.redraw = draw_state is not None
    ctx.set_materialize_grads(False)  # the codes get no gradient: no zero tensors of their size in backward


def _bytes(t: Tensor):
    """t's size in bytes, also where its shape is symbolic (torch.compile with dynamic shapes; .nbytes fails)."""
    return t.numel() * t.element_size()


def _lsh_backward(ctx, grad, *_codes_grads):
    if grad is None:
        return (None,) * 12
    q, k, v, q_mask, k_mask, *codes_source = ctx.saved_tensors
    tau = ctx.hashing[1]
    grad = rows_in_layout(grad, q.dim())
    if not ctx.lsh_backward:  # YOSO-E's gradients, on flat rows
        flat = expectation_backward(*(as_flat(t) for t in (q, k, v, grad)), q_mask, k_mask, tau, False)
        dq, dk, dv = (from_flat(g, x) for g, x in zip(flat, (q, k, v)))
    else:
        if not ctx.recompute:  # (q_codes, k_codes, hash_draw, draw_state)
            codes = (*codes_source, None, None)
        elif ctx.redraw:
            codes = (None, None, None, *codes_source)
        else:
            codes = (None, None, *codes_source, None)
        dq, dk, dv = lsh_backward(q, k, v, grad, *codes, q_mask, k_mask, *ctx.hashing)
    dq, dk, dv = poison_gradients((dq, dk, dv), q, k, v, q_mask, k_mask)
    return dq, dk, dv, *(None,) * 9


lsh.register_autograd(_lsh_backward, setup_context=_lsh_setup)


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
    """YOSO sampling attention in linear time: with Gaussian hash functions (fast_hash=False) an unbiased estimate of
    ``yoso_expectation``; the fast hash's orthogonal bits collide less often at any angle > 0 (a sharper kernel).

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
        fast_hash: Hadamard hash (needs d >= tau after padding d to a power of two; O(d log d) a row instead of
            O(d m tau), but biased: see docs/design.md, "What the sampling estimates") instead of Gaussian.
        lsh_backward: linear-time sampled gradients (True) or the dense YOSO-E gradients (False).
        generator: source of the hash functions; without it they are drawn from torch's global random state
            (as torch.randint would; reproducible with torch.manual_seed, and inside torch.compile). The codes
            used are exactly those ``hash_codes(q, k, ..., generator=g)`` returns for ``g`` in the same state.
        recompute_codes: for the sampled backward, keep the generator's state from before the draw (a few KB;
            the draw itself, no n in its shape, under torch.compile and torch.export) instead of the 2 * m * n
            codes, and draw and hash again in backward: less memory for one more hashing, same results. Codes
            are kept anyway where they take fewer bytes (a few hundred tokens at most).

    Returns:
        (..., L, dv) in v's dtype; computed in fp32. O(m * (L + S) * d) time and O(n * d) extra memory,
        forward and backward (lsh_backward=True). Non-finite input gives NaN where softmax attention would (see
        ``yoso_expectation``); masked positions are ignored whatever they hold.
    """
    check_hash_params(num_hash, hash_code_len)
    with fp32_region(q):
        q32, k32, v32, q_mask, k_mask = prepare(q, k, v, mask, rows=head_rows)
        hashing = (num_hash, hash_code_len, fast_hash)
        # With recompute_codes the backward can draw the hash functions again from the generator's state: a few KB
        # kept instead of the draw. Not under tracing, where the state cannot be read: the draw is kept there.
        redraw = recompute_codes and lsh_backward and not is_traced(q32)
        state = generator_state(q32.device, generator) if redraw else None
        draw = draw_hash_functions(num_rows(q32), q32.shape[-1], *hashing, q32.device, generator)
        out, _, _ = lsh(q32, k32, v32, draw, state, q_mask, k_mask, *hashing, bool(lsh_backward),
                        bool(recompute_codes))  # fmt: skip
        out = poison_output_(out, q32, k32, v32, q_mask, k_mask)
    return out.reshape(*q.shape[:-1], v.shape[-1]).to(v.dtype)
