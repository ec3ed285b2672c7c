"""Row normalisation owned by the ops: YOSO attends with directions q^ = q / |q| (Zeng et al. 2021, sec. 3).

The ops normalise inside their autograd functions instead of saving F.normalize's graph: the backward
recomputes q^ from the saved q (one cheap pass) rather than keeping q^ beside q, and applies the
normalisation's derivative itself. Semantics are those of ``F.normalize(x, dim=-1, eps=1e-12)``.
"""

from __future__ import annotations

import torch

from .backend import as_numpy, numba_kernels

NORM_EPS = 1e-12  # F.normalize's default: rows shorter than this are divided by eps instead


def flat_rows(x: torch.Tensor) -> torch.Tensor:
    """(..., n, d) -> contiguous (B, n, d) float32: the layout every kernel reads at full speed.

    Models hand the ops transposed views of (batch, n, heads, head_dim); read through their strides, the
    kernels ran 3x slower, so they always get this copy (a view when x already has this layout).
    """
    return x.reshape(-1, x.shape[-2], x.shape[-1]).float().contiguous()


def unit_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, n, d) -> (x / max(|x|, eps), max(|x|, eps)) with the norm shaped (B, n, 1)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(NORM_EPS)  # (B, n, 1)
    return x / norm, norm


def unit_rows_backward(xn: torch.Tensor, norm: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. x of x / max(|x|, eps) given the gradient w.r.t. its output: (grad - xn (xn . grad)) / |x|,
    and grad / eps for rows shorter than eps (where the norm is the constant eps)."""
    kernels = numba_kernels(grad)
    if kernels is not None:  # one pass instead of five over (B, n, d): 16 -> 9.5 ms for q and k at n = 4096
        out = torch.empty(grad.shape)
        kernels.unit_rows_backward(as_numpy(xn), as_numpy(norm), as_numpy(grad), NORM_EPS, out.numpy())
        return out
    radial = (xn * grad).sum(-1, keepdim=True)  # (B, n, 1)
    radial = radial.masked_fill_(norm <= NORM_EPS, 0.0)
    return (grad - xn * radial).div_(norm)
