"""The row layouts the ops read and write.

A model splits its (batch, n, heads * d) projections into heads as the view (batch, heads, n, d) of that memory:
row i of head h sits beside row i of head h + 1. SDPA reads such views through their strides; copying them into
(batch x heads, n, d) rows, as the ops once did, cost a copy of q, k and v in forward and of dq, dk, dv (and the
output and its gradient) on the way back: memory traffic and heap churn that softmax never had (a MQAR training
step allocated 105 buffers of 1 MB or more where softmax's allocates 77; now 87; docs/studies.md).

So the sampled ops take rows in either of two layouts, by their logical shape (..., n, d) as always:

- **flat**: contiguous (B, n, d) rows, B the flattened leading dims;
- **head-interleaved**: (batch, heads, n, d) whose memory is a contiguous (batch, n, heads, d), the models' view.

Outputs and gradients take the layout of the rows they belong to, so that a model's transposes stay views.
The kernels see both as (batch, n, heads, d) arrays (``kernel_rows``; heads = 1 for flat rows), and the flattened
(batch x head) index b = batch_index * heads + head is the order of the codes, masks and hash functions.
"""

from __future__ import annotations

import torch


def flat_rows(x: torch.Tensor) -> torch.Tensor:
    """(..., n, d) -> contiguous (B, n, d) float32 (a view when x already has this layout)."""
    return x.reshape(-1, x.shape[-2], x.shape[-1]).float().contiguous()


def is_interleaved(x: torch.Tensor) -> bool:
    """Whether x is a (batch, heads, n, d) view of a contiguous (batch, n, heads, d)."""
    return x.dim() == 4 and x.transpose(1, 2).is_contiguous()


def head_rows(x: torch.Tensor) -> torch.Tensor:
    """(..., n, d) -> float32 rows in a layout the sampled ops take: x itself when it is head-interleaved float32,
    else its flat rows (a copy only where x has neither layout)."""
    return x if x.dtype == torch.float32 and is_interleaved(x) else flat_rows(x)


def kernel_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows in either layout -> the (batch, n, heads, d) contiguous view the kernels index (heads = 1 if flat)."""
    return x.transpose(1, 2) if x.dim() == 4 else x.unsqueeze(2)


def from_kernel_rows(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of ``kernel_rows``: a (batch, n, heads, width) tensor as rows in the layout of ``like``."""
    return x.transpose(1, 2) if like.dim() == 4 else x.squeeze(2)


def new_rows(like: torch.Tensor, n: int, width: int, zeros: bool = False) -> torch.Tensor:
    """Fresh float32 rows (n of them, of the given width) in the layout of ``like``; not a view (an operator may
    return it, and it may be modified in place)."""
    if like.dim() == 3:
        shape, strides = (like.shape[0], n, width), (n * width, width, 1)
    else:
        batch, heads = like.shape[:2]
        shape, strides = (batch, heads, n, width), (n * heads * width, width, heads * width, 1)
    rows = torch.empty_strided(shape, strides, dtype=torch.float32, device=like.device)
    return rows.zero_() if zeros else rows


def rows_in_layout(x: torch.Tensor, rank: int) -> torch.Tensor:
    """x (..., n, d), e.g. a gradient, as float32 rows in the layout of rank ``rank`` (3: flat, 4: head-interleaved):
    x itself when it has that layout, else a copy."""
    if rank == 3:
        return flat_rows(x)
    if x.dtype == torch.float32 and is_interleaved(x):
        return x
    return new_rows(x, x.shape[-2], x.shape[-1]).copy_(x)


def from_flat(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Flat (B, n, width) results for rows like ``like`` -> in like's layout (flat itself when like is flat)."""
    if like.dim() == 3:
        return flat
    return new_rows(like, flat.shape[1], flat.shape[2]).copy_(flat.view(*like.shape[:2], *flat.shape[1:]))


def num_rows(x: torch.Tensor) -> int:
    """B, the number of (batch x head) rows of x in either layout."""
    return x.shape[0] * x.shape[1] if x.dim() == 4 else x.shape[0]


def as_flat(x: torch.Tensor) -> torch.Tensor:
    """Rows in either layout -> contiguous (B, n, d): what the torch path computes on (a copy if interleaved)."""
    return x.reshape(-1, x.shape[-2], x.shape[-1]).contiguous()


def per_row(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, n) per-row values (masks, flags) -> broadcastable against rows of either layout: (..., n, 1)."""
    return values.reshape(rows.shape[:-1])[..., None]


class _ZeroPadding(torch.autograd.Function):
    """x with the padded rows (keep False) set to zero, in x's layout. The gradient passes as it comes: the ops
    give padded rows exact zero gradients themselves (tests/ops/test_nonfinite.py), and ``masked_fill``'s own
    backward, which zeroed them again, returned interleaved rows' gradient in another layout (a copy, then the
    model's transpose another)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return x.clone().masked_fill_(~keep, 0.0)  # clone keeps the layout; masked_fill_ is NaN-safe, unlike x * keep

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def zero_padding(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Rows x (either layout) with the rows where keep ((B, n) bool) is False zeroed: a fresh tensor in x's layout,
    for ops whose gradients are zero on those rows."""
    return _ZeroPadding.apply(x, per_row(keep, x))

