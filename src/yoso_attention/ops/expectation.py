"""YOSO-E: the expectation of YOSO's sampled attention, computed exactly in query blocks.

out_i = mask_i * sum_j mask_j * (1 - arccos(q^_i . k^_j) / pi) ** tau * v_j    (Zeng et al. 2021, eq. 4)

O(n^2 d) time like softmax attention, but O(block * n) extra memory forward and backward: the n x n
matrix is never formed. On CPU the elementwise part (arccos, power, gradient weights) runs fused in one
numba pass per block, in cache, between two BLAS matmuls.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor

from .backend import as_numpy, dispatch, fp32_region
from .checks import check_hash_params, check_mask, check_qkv
from .cumulation import flat_mask
from .nonfinite import poison_gradients, poison_output_
from .layout import flat_rows, zero_padding
from .normalize import unit_rows, unit_rows_backward

_BLOCK_ELEMENTS = 1 << 22  # elements of one (B, block, S) scratch matrix: 16 MB in fp32
EXACT_GRAD_EPS = 1e-6  # cos clamped to [-1 + eps, 1 - eps] in the exact derivative, singular at +-1


def _block_rows(n_b: int, n_q: int, n_k: int) -> int:
    return max(16, min(n_q, _BLOCK_ELEMENTS // max(1, n_b * n_k)))


def _prob_torch(cos: torch.Tensor, tau: int) -> torch.Tensor:
    return (1 - torch.acos(cos.clamp(-1.0, 1.0)) / math.pi) ** tau


def collision_prob_(kernels, cos: torch.Tensor, k_mask: torch.Tensor, tau: int) -> torch.Tensor:
    """In place where possible: cos (B, L, S) -> k_mask_j * (1 - arccos(cos) / pi) ** tau."""
    if kernels is None:
        return _prob_torch(cos, tau) * k_mask[:, None, :]
    kernels.collision_prob_(cos.numpy(), as_numpy(k_mask.float()), tau)
    return cos


def prob_and_weight_(kernels, cos, dov, k_mask, tau: int, exact: bool):
    """cos -> P (masked collision probability); dov = dO V^T -> the weight W of the q/k gradients."""
    if kernels is not None:
        kernels.collision_prob_and_weight_(
            cos.numpy(), dov.numpy(), as_numpy(k_mask.float()), tau, exact, EXACT_GRAD_EPS
        )
        return cos, dov
    km = k_mask[:, None, :]
    prob = _prob_torch(cos, tau) * km
    if exact:
        c = cos.clamp(-1 + EXACT_GRAD_EPS, 1 - EXACT_GRAD_EPS)
        base = 1 - torch.acos(cos.clamp(-1.0, 1.0)) / math.pi
        deriv = tau * base ** (tau - 1) / (math.pi * torch.sqrt(1 - c * c))
        return prob, dov * deriv * km
    return prob, dov * (tau / 2) * prob


def _forward_blocks(kernels, q, k, v, q_mask, k_mask, tau: int) -> torch.Tensor:
    """q (B, L, d), k (B, S, d) raw rows (normalised here), v (B, S, dv) float32 -> (B, L, dv) float32."""
    qn, kn = unit_rows(q)[0], unit_rows(k)[0]
    n_b, n_q, n_k = qn.shape[0], qn.shape[1], kn.shape[1]
    out = v.new_empty(n_b, n_q, v.shape[2])
    k_t = kn.transpose(1, 2)  # (B, d, S)
    rows = _block_rows(n_b, n_q, n_k)
    for i0 in range(0, n_q, rows):
        cos = torch.bmm(qn[:, i0 : i0 + rows], k_t)  # (B, rows, S)
        out[:, i0 : i0 + rows] = torch.bmm(collision_prob_(kernels, cos, k_mask, tau), v)
    return out.masked_fill_(~q_mask[..., None], 0.0)


def expectation_backward_unit(kernels, qn, kn, v, dout, q_mask, k_mask, tau: int, exact: bool):
    """Gradients w.r.t. the unit rows qn, kn and v of the blocked forward, for output gradient dout (B, L, dv)."""
    n_b, n_q, n_k = qn.shape[0], qn.shape[1], kn.shape[1]
    dout = dout.masked_fill(~q_mask[..., None], 0.0)
    dq = torch.empty_like(qn)
    dk = torch.zeros_like(kn)
    dv = torch.zeros_like(v)
    k_t, v_t = kn.transpose(1, 2), v.transpose(1, 2)
    rows = _block_rows(n_b, n_q, n_k)
    for i0 in range(0, n_q, rows):
        q_blk, do_blk = qn[:, i0 : i0 + rows], dout[:, i0 : i0 + rows]
        prob, weight = prob_and_weight_(kernels, torch.bmm(q_blk, k_t), torch.bmm(do_blk, v_t), k_mask, tau, exact)
        dq[:, i0 : i0 + rows] = torch.bmm(weight, kn)
        dk.baddbmm_(weight.transpose(1, 2), q_blk)
        dv.baddbmm_(prob.transpose(1, 2), do_blk)
    return dq, dk, dv


def _backward_blocks(kernels, q, k, v, dout, q_mask, k_mask, tau: int, exact: bool):
    """Gradients w.r.t. the raw q, k and v."""
    (qn, q_norm), (kn, k_norm) = unit_rows(q), unit_rows(k)
    dqn, dkn, dv = expectation_backward_unit(kernels, qn, kn, v, dout, q_mask, k_mask, tau, exact)
    return unit_rows_backward(qn, q_norm, dqn, in_place=True), unit_rows_backward(kn, k_norm, dkn, in_place=True), dv


@torch.library.custom_op("yoso::expectation", mutates_args=())
def expectation(q: Tensor, k: Tensor, v: Tensor, q_mask: Tensor, k_mask: Tensor, tau: int, exact_grad: bool
                ) -> Tensor:  # fmt: skip
    """YOSO-E of (B, L, d) q, (B, S, d) k (raw rows), v float32 (..., S, dv) in any layout whose leading dims
    flatten to B (see ``prepare``) and (B, n) bool masks: (B, L, dv)."""
    return dispatch(_forward_blocks, partial(_forward_blocks, None), q, k, flat_rows(v), q_mask, k_mask, tau)


@expectation.register_fake
def _(q, k, v, q_mask, k_mask, tau, exact_grad):
    return v.new_empty(q.shape[0], q.shape[1], v.shape[-1])


@torch.library.custom_op("yoso::expectation_backward", mutates_args=())
def expectation_backward(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, q_mask: Tensor, k_mask: Tensor, tau: int,
                         exact: bool) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(dq, dk, dv) of ``expectation`` (raw q, k) for the output gradient dout (B, L, dv): the surrogate
    dp/dcos = (tau / 2) p (exact=False) or the exact derivative."""
    return dispatch(_backward_blocks, partial(_backward_blocks, None), q, k, v, dout, q_mask, k_mask, tau, exact)


@expectation_backward.register_fake
def _(q, k, v, dout, q_mask, k_mask, tau, exact):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _expectation_setup(ctx, inputs, output):
    q, k, v, q_mask, k_mask, ctx.tau, ctx.exact_grad = inputs
    ctx.save_for_backward(q, k, v, q_mask, k_mask)


def _expectation_backward(ctx, grad):
    q, k, v, q_mask, k_mask = ctx.saved_tensors
    v_rows = flat_rows(v)
    dq, dk, dv = expectation_backward(q, k, v_rows, grad.float().contiguous(), q_mask, k_mask, ctx.tau,
                                      ctx.exact_grad)  # fmt: skip
    dq, dk, dv = poison_gradients((dq, dk, dv), q, k, v_rows, q_mask, k_mask)
    return dq, dk, dv.view(v.shape), None, None, None, None


expectation.register_autograd(_expectation_backward, setup_context=_expectation_setup)


def prepare(q, k, v, mask, rows=flat_rows):
    """Validate and lay out: returns float32 q, k as ``rows`` (flat_rows: contiguous (B, n, d); head_rows: the
    sampled ops' layouts, see ``layout``), v, and the (B, n) bool masks (q_mask, k_mask). Unmasked, v is ``rows``
    of v too, except for flat rows, where v keeps its layout (..., S, dv): the ops copy its rows where they read
    them and save v itself, which a model keeps anyway (YOSO-C's convolution), instead of a second copy."""
    check_qkv(q, k, v)
    n_q, n_k = q.shape[-2], k.shape[-2]
    q_shape = q.shape[:-1]
    if mask is not None and n_q != n_k:
        raise ValueError(f"mask needs q and k of one length (self-attention); got L={n_q} and S={n_k}")
    mask = check_mask("mask", mask, q_shape, q.device)
    q_mask = flat_mask(mask, q_shape, q.device)
    if mask is None:
        v_rows = v.float() if rows is flat_rows else rows(v)
        k_mask = q_mask if k.shape[:-1] == q_shape else flat_mask(None, k.shape[:-1], q.device)
        return rows(q), rows(k), v_rows, q_mask, k_mask
    # Padding may hold anything (NaN included): zero it, so that a padded batch equals the truncated one.
    return *(zero_padding(rows(t), q_mask) for t in (q, k, v)), q_mask, q_mask


def yoso_expectation(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    hash_code_len: int = 9,
    exact_grad: bool = False,
) -> torch.Tensor:
    """YOSO-E attention: collision-probability-weighted sums of values, exact and deterministic.

    out_i = mask_i * sum_j mask_j * (1 - arccos(q^_i . k^_j) / pi) ** hash_code_len * v_j

    No softmax, no 1/sqrt(d) scale, no row normalisation (as in the paper).

    Args:
        q: (..., L, d) queries; only directions matter (normalised inside).
        k: (..., S, d) keys; same leading dims, dtype and device as q.
        v: (..., S, dv) values.
        mask: bool, True for real tokens, broadcastable to (..., L); applies to queries and keys (needs
            L == S). Masked queries get exact zeros; masked keys contribute nothing.
        hash_code_len: tau in [1, 20], the exponent of the collision probability.
        exact_grad: differentiate p exactly (cos clamped to 1 - 1e-6 where dp/dcos is singular) instead of
            the reference's surrogate dp/dcos ~ (tau / 2) * p.

    Returns:
        (..., L, dv) in v's dtype; computed in fp32. O(L * S * d) time, O(block * S) extra memory. Non-finite
        input propagates as with softmax attention: NaN in the rows of queries that hold NaN or Inf and, if an
        unmasked key or value does, in every unmasked row (gradients: NaN for the whole (batch, head) row).
        Masked positions are ignored whatever they hold.
    """
    check_hash_params(None, hash_code_len)
    with fp32_region(q):
        q32, k32, v32, q_mask, k_mask = prepare(q, k, v, mask)
        out = expectation(q32, k32, v32, q_mask, k_mask, hash_code_len, bool(exact_grad))
        out = poison_output_(out, q32, k32, v32, q_mask, k_mask)
    return out.reshape(*q.shape[:-1], v.shape[-1]).to(v.dtype)
