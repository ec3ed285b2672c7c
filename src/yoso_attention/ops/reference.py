"""Dense O(n^2) formulas of YOSO: the ground truth for tests and the attention maps of the models.

Plain torch autograd graphs, no blocking, no kernels. The surrogate gradient of the paper's code
(dp/dcos replaced by (tau/2) p) is expressed with a straight-through term so that autograd through these
functions yields exactly the reference's dQ = (tau/2) (dO V^T * P) K^ and dK = (tau/2) (...)^T Q^.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def collision_probability(cos: torch.Tensor, tau: int) -> torch.Tensor:
    """p = (1 - arccos(cos) / pi) ** tau, cos clamped to [-1, 1]."""
    return (1 - torch.acos(cos.clamp(-1.0, 1.0)) / math.pi) ** tau


def _cosines(q, k) -> torch.Tensor:
    return F.normalize(q.float(), dim=-1) @ F.normalize(k.float(), dim=-1).transpose(-1, -2)  # (..., L, S)


def _pair_mask(mask: torch.Tensor | None, cos: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(cos)
    m = mask.to(cos.dtype).expand(cos.shape[:-1])
    return m[..., :, None] * m[..., None, :]


def _with_surrogate_grad(weights: torch.Tensor, cos: torch.Tensor, tau: int) -> torch.Tensor:
    """Value ``weights``, gradient w.r.t. cos = (tau / 2) * weights * upstream."""
    return weights.detach() + (tau / 2) * weights.detach() * (cos - cos.detach())


def expectation_matrix(q, k, mask=None, *, hash_code_len: int, surrogate_grad: bool = True) -> torch.Tensor:
    """The (..., L, S) matrix of masked collision probabilities of YOSO-E."""
    cos = _cosines(q, k)
    prob = collision_probability(cos, hash_code_len) * _pair_mask(mask, cos)
    return _with_surrogate_grad(prob, cos, hash_code_len) if surrogate_grad else prob


def sampled_collision_matrix(q_codes, k_codes, q_mask=None, k_mask=None) -> torch.Tensor:
    """(..., L, S) fraction of the m hash functions under which query i and key j collide, masked."""
    freq = torch.zeros(*q_codes.shape[:-1], k_codes.shape[-2], device=q_codes.device)
    for h in range(q_codes.shape[-1]):
        freq += (q_codes[..., :, None, h] == k_codes[..., None, :, h]).float()
    freq /= q_codes.shape[-1]
    if q_mask is not None:
        freq = freq * q_mask[..., :, None].float()
    if k_mask is not None:
        freq = freq * k_mask[..., None, :].float()
    return freq


def yoso_expectation_reference(q, k, v, mask=None, *, hash_code_len=9, exact_grad=False):
    """Dense YOSO-E; ``exact_grad`` differentiates arccos exactly (undefined at cos = +-1)."""
    prob = expectation_matrix(q, k, mask, hash_code_len=hash_code_len, surrogate_grad=not exact_grad)
    return (prob @ v.float()).to(v.dtype)


def sampled_collision_weights(q, k, q_codes, k_codes, mask=None, *, hash_code_len: int) -> torch.Tensor:
    """The (..., L, S) masked collision frequencies of the codes, with the sampled backward's gradient w.r.t. q and
    k: (weights @ v) has the values and gradients of ``yoso_lsh`` with lsh_backward=True under these codes."""
    cos = _cosines(q, k)
    freq = sampled_collision_matrix(q_codes, k_codes) * _pair_mask(mask, cos)
    return _with_surrogate_grad(freq, cos, hash_code_len)


def yoso_lsh_reference(q, k, v, q_codes, k_codes, mask=None, *, hash_code_len=9, lsh_backward=True):
    """Dense YOSO from given codes, with the reference gradients: sampled (lsh_backward) or YOSO-E."""
    if lsh_backward:
        weights = sampled_collision_weights(q, k, q_codes, k_codes, mask, hash_code_len=hash_code_len)
        return (weights @ v.float()).to(v.dtype)
    cos = _cosines(q, k)
    freq = sampled_collision_matrix(q_codes, k_codes) * _pair_mask(mask, cos)
    prob = collision_probability(cos, hash_code_len).detach() * _pair_mask(mask, cos)
    # Value: freq @ v. Gradients: those of YOSO-E (w.r.t. q, k through prob, w.r.t. v through prob).
    out_e = _with_surrogate_grad(prob, cos, hash_code_len) @ v.float()
    return (out_e + (freq @ v.float() - out_e).detach()).to(v.dtype)
