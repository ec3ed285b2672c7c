"""Sign-random-projection hashing (Charikar 2002) as used by YOSO (Zeng et al., ICML 2021, sec. 3).

A tau-bit hash of x is the sign pattern of tau random projections; two vectors collide with probability
(1 - angle / pi) ** tau. Signs of linear projections depend only on x's direction, so rows are hashed
as they are (no normalisation pass). Two families:

- Gaussian: P x with P (num_hash * tau, d) i.i.d. N(0, 1).
- Fast (Hadamard): H D3 H D2 H D1 x with H the unnormalised Walsh-Hadamard transform of size d_pad (d
  zero-padded to a power of two) and D1..D3 random +-1 diagonals. One draw ("part") gives
  floor(d_pad / tau) hash functions; ceil(num_hash / that) parts are drawn.

Random draws come from ``generator`` in a fixed order (one tensor per call), so the same generator state
always gives the same codes, whichever entry point (``hash_codes`` or ``yoso_lsh``) drew them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import as_numpy, dispatch, fp32_region
from .checks import check_float, check_hash_params
from .layout import as_flat, flat_rows, kernel_rows, num_rows


def code_dtype(tau: int) -> torch.dtype:
    """The smallest integer type holding codes in [0, 2**tau): what the backward keeps per query and key."""
    return torch.uint8 if tau <= 8 else torch.int16 if tau <= 15 else torch.int32


def padded_dim(d: int) -> int:
    return 1 << max(0, (d - 1).bit_length())


def fast_hash_parts(d: int, num_hash: int, hash_code_len: int) -> int:
    per_part = padded_dim(d) // hash_code_len
    if per_part < 1:
        raise ValueError(
            f"fast_hash needs head dim d >= hash_code_len after padding to a power of two; got d={d} "
            f"(padded {padded_dim(d)}) and hash_code_len={hash_code_len}; use fast_hash=False"
        )
    return -(-num_hash // per_part)


def hadamard(size: int, device: torch.device) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard matrix: H[i, j] = (-1) ** popcount(i & j)."""
    idx = torch.arange(size, device=device)
    bits = idx[:, None] & idx[None, :]
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    return 1.0 - 2.0 * parity.float()


def _codes_from_projections(proj: torch.Tensor, num_hash: int, tau: int) -> torch.Tensor:
    """proj (B, n, >= num_hash * tau) -> codes (B, num_hash, n) of code_dtype(tau)."""
    n_b, n, _ = proj.shape
    bits = proj[..., : num_hash * tau].reshape(n_b, n, num_hash, tau) > 0  # (B, n, m, tau)
    weights = torch.pow(2, torch.arange(tau, device=proj.device, dtype=torch.int32))
    codes = (bits.to(torch.int32) * weights).sum(-1, dtype=torch.int32)  # (B, n, m)
    return codes.transpose(1, 2).to(code_dtype(tau)).contiguous()


def _fast_projection_matrix(signs: torch.Tensor, d: int, tau: int) -> torch.Tensor:
    """The dense (B, d, parts * per_part * tau) matrix equal to x -> H D3 H D2 H D1 x on used coordinates."""
    n_b, parts, _, d_pad = signs.shape
    h = hadamard(d_pad, signs.device)
    s1, s2, s3 = (signs[:, :, i, :, None] for i in range(3))  # (B, parts, d_pad, 1)
    # Row-vector form: x^T M^T = x^T D1 H D2 H D3 H.
    mat = s1 * (h @ (s2 * (h @ (s3 * h))))  # (B, parts, d_pad, d_pad)
    used = (d_pad // tau) * tau
    return mat[:, :, :d, :used].permute(0, 2, 1, 3).reshape(n_b, d, parts * used)


def draw_hash_functions(
    n_b: int, d: int, num_hash: int, tau: int, fast: bool, device, generator: torch.Generator | None
) -> torch.Tensor:
    """The random draw that defines num_hash tau-bit hash functions for each of n_b (batch x head) rows:
    (n_b, parts, 3, d_pad) +-1 signs (fast) or (n_b, d, num_hash * tau) Gaussian projections. No n in its
    shape: the sampled backward can keep it and rehash instead of keeping the codes."""
    if fast:
        shape = (n_b, fast_hash_parts(d, num_hash, tau), 3, padded_dim(d))
        return torch.randint(0, 2, shape, generator=generator, device=device).float() * 2 - 1
    return torch.randn((n_b, d, num_hash * tau), generator=generator, device=device)


def generator_state(device: torch.device, generator: torch.Generator | None) -> Tensor | None:
    """The state of the generator ``draw_hash_functions(..., device, generator)`` draws from (``generator``, else
    the device's default one), from which ``redraw_hash_functions`` draws the same hash functions again: a few KB
    where the draw has n_b * d * m * tau floats. None where no such generator exists."""
    if generator is None:
        generator = _default_generator(device)
    return None if generator is None else generator.get_state()


def _default_generator(device: torch.device) -> torch.Generator | None:
    if device.type == "cpu":
        return torch.default_generator
    module = getattr(torch, device.type, None)
    generators = getattr(module, "default_generators", ())
    if not generators:  # meta, and backends without per-device generators: the backward keeps the draw
        return None
    index = device.index if device.index is not None else module.current_device()
    return generators[index] if index < len(generators) else None


def redraw_hash_functions(state: Tensor, n_b: int, d: int, num_hash: int, tau: int, fast: bool,
                          device: torch.device) -> Tensor:  # fmt: skip
    """``draw_hash_functions``' draw again, from the generator state ``generator_state`` read before it."""
    generator = torch.Generator(device=device)
    generator.set_state(state)
    return draw_hash_functions(n_b, d, num_hash, tau, fast, device, generator)


PROJECTION_CHUNK_FLOATS = 2**22  # rows projected together: at most 16 MB of fp32 projections at a time


def _row_chunks(n_rows: int, n: int, width: int) -> list[slice]:
    """Slices of n_rows rows of n vectors whose (rows, n, width) projections hold at most PROJECTION_CHUNK_FLOATS
    floats: a Gaussian projection is num_hash * tau / d times the size of x (2.75x for tau 11, m 8 and d 32;
    8x for tau 8, m 32), and all of it existed at once before."""
    step = max(1, PROJECTION_CHUNK_FLOATS // max(1, n * width))
    return [slice(i, i + step) for i in range(0, n_rows, step)]


def _hash_cpu(kernels, x, randomness, num_hash, tau, fast) -> torch.Tensor:
    rows = kernel_rows(x)  # (batch, n, heads, d)
    batch, n, heads, _ = rows.shape
    codes = torch.empty((batch * heads, num_hash, n), dtype=code_dtype(tau))
    # Both kernels project a block of rows at a time in cache: no projections in memory (the Gaussian ones went
    # through BLAS in 16 MB chunks of num_hash * tau / d times q's size; in the kernel 3-5x faster at d = 32).
    kernel = kernels.fast_hash_codes if fast else kernels.gaussian_hash_codes
    kernel(as_numpy(rows), as_numpy(randomness), num_hash, tau, codes.numpy())
    return codes


def _hash_torch(x, randomness, num_hash, tau, fast) -> torch.Tensor:
    x = as_flat(x)
    proj_matrix = _fast_projection_matrix(randomness, x.shape[-1], tau) if fast else randomness
    return torch.cat([
        _codes_from_projections(torch.bmm(x[rows], proj_matrix[rows]), num_hash, tau)  # (rows, n, >= m * tau)
        for rows in _row_chunks(x.shape[0], x.shape[1], proj_matrix.shape[-1])
    ])  # fmt: skip


@torch.library.custom_op("yoso::hash_rows", mutates_args=())
def hash_rows(x: Tensor, randomness: Tensor, num_hash: int, tau: int, fast: bool) -> Tensor:
    """x float32 rows (..., n, d) in either layout of ``layout`` and a ``draw_hash_functions`` draw -> codes
    (B, num_hash, n) of code_dtype(tau); deterministic, so rehashing the same rows gives the same codes."""
    return dispatch(_hash_cpu, _hash_torch, x.detach(), randomness, num_hash, tau, fast)


@hash_rows.register_fake
def _(x, randomness, num_hash, tau, fast):
    return x.new_empty((num_rows(x), num_hash, x.shape[-2]), dtype=code_dtype(tau))


def hash_flat(
    q: torch.Tensor, k: torch.Tensor, num_hash: int, tau: int, fast: bool, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (..., L, d), k (..., S, d) float32 rows (``layout``) -> codes (B, num_hash, L) and (B, num_hash, S) of
    code_dtype(tau), sharing one draw."""
    randomness = draw_hash_functions(num_rows(q), q.shape[-1], num_hash, tau, fast, q.device, generator)
    return hash_pair(q, k, randomness, num_hash, tau, fast)


def hash_pair(
    q: torch.Tensor, k: torch.Tensor, randomness: torch.Tensor, num_hash: int, tau: int, fast: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``hash_rows`` of q and of k under one draw."""
    return hash_rows(q, randomness, num_hash, tau, fast), hash_rows(k, randomness, num_hash, tau, fast)


def hash_codes(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    num_hash: int,
    hash_code_len: int,
    fast_hash: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hash queries and keys with the same ``num_hash`` random ``hash_code_len``-bit hash functions.

    Args:
        q: (..., L, d) floating tensor. Only directions matter.
        k: (..., S, d), same leading dims, dtype and device as ``q``.
        num_hash: number of hash functions m >= 1.
        hash_code_len: bits per code tau, in [1, 20].
        fast_hash: Hadamard hash (needs padded d >= tau) instead of a Gaussian projection.
        generator: source of the random hash functions; fresh ones on each call without it.

    Returns:
        (q_codes, k_codes): int32 tensors (..., L, m) and (..., S, m) with values in [0, 2 ** tau).
        ``yoso_lsh`` with a generator in the same state uses exactly these codes.
    """
    check_float("q", q)
    check_float("k", k)
    check_hash_params(num_hash, hash_code_len)
    if k.shape[:-2] != q.shape[:-2] or k.shape[-1] != q.shape[-1] or k.device != q.device:
        raise ValueError(
            f"k has shape {tuple(k.shape)} on {k.device}; expected (..., S, {q.shape[-1]}) with leading dims "
            f"{tuple(q.shape[:-2])} on {q.device} like q"
        )
    lead = q.shape[:-2]
    with fp32_region(q):  # the same fp32 rows that yoso_lsh hashes, so the codes agree exactly
        q_codes, k_codes = hash_flat(flat_rows(q), flat_rows(k), num_hash, hash_code_len, fast_hash, generator)
    return (
        q_codes.transpose(1, 2).reshape(*lead, q.shape[-2], num_hash).to(torch.int32),
        k_codes.transpose(1, 2).reshape(*lead, k.shape[-2], num_hash).to(torch.int32),
    )
