"""Sampling is unbiased and hashing is what the paper defines, checked independently of the op's own code.

- With Gaussian hash functions, the mean of many independent sampled outputs converges to YOSO-E: fitted scale
  within 1% of 1 (a 3% scale error fails by many standard deviations) and residual error at the 1/sqrt(hashes)
  level. The fast (Hadamard) hash is not unbiased, by construction: the tau bits of a code come from orthogonal
  coordinates of one structured rotation, whose joint collision probability is below (1 - angle/pi) ** tau for
  any angle > 0 (measured here: total collision mass 0.98x YOSO-E's at d 64, tau 3; 0.82x at d 64, tau 9; 0.48x
  at d 16, tau 11). What the fast hash computes is checked bit by bit below.
- Codes are recomputed here from the drawn hash functions, written out as projections and sign bits (Gaussian
  P x; fast H D3 H D2 H D1 x with a Sylvester Hadamard matrix built here), for several tau and d.
"""

import math

import pytest
import torch

from yoso_attention.ops import hash_codes, yoso_expectation, yoso_lsh


def fitted_scale(estimate: torch.Tensor, target: torch.Tensor) -> float:
    """The least-squares a in estimate ~ a * target."""
    e, t = estimate.double().flatten(), target.double().flatten()
    return float(e @ t / (t @ t))


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
def test_mean_of_independent_samples_is_yoso_e(backend, masked):
    fast_hash = False
    tau, m, calls = 3, 32, 200
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 40, 16, generator=g) for _ in range(3))
    mask = (torch.rand(2, 40, generator=g) > 0.25) if masked else None
    want = yoso_expectation(q, k, v, mask, hash_code_len=tau)
    total = torch.zeros_like(want, dtype=torch.float64)
    for i in range(calls):
        total += yoso_lsh(q, k, v, mask, num_hash=m, hash_code_len=tau, fast_hash=fast_hash,
                          generator=torch.Generator().manual_seed(100 + i))  # fmt: skip
    mean = total / calls
    scale = fitted_scale(mean, want)
    # The fitted scale here moved by 0.12% (s.d.; 0.17% at most) over six seeds: a 3% bias is ~25 s.d. away.
    assert abs(scale - 1) < 0.01, scale
    residual = float((mean - want).norm() / want.norm())
    single = float((yoso_lsh(q, k, v, mask, num_hash=m, hash_code_len=tau, fast_hash=fast_hash, generator=g)
                    - want).norm() / want.norm())  # fmt: skip
    assert residual < 2.5 * single / math.sqrt(calls)  # independent estimates: error falls like 1/sqrt(calls)


def sylvester_hadamard(size: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def projections(x: torch.Tensor, num_hash: int, tau: int, fast: bool, seed: int) -> torch.Tensor:
    """(B, n, num_hash, tau) projections of the rows of x (B, n, d) under the hash functions that a generator
    seeded with ``seed`` draws: documented draw order, one tensor per call."""
    n_b, n, d = x.shape
    g = torch.Generator().manual_seed(seed)
    x = x.double()
    if not fast:
        proj = torch.randn((n_b, d, num_hash * tau), generator=g).double()  # i.i.d. N(0, 1)
        return (x @ proj).reshape(n_b, n, num_hash, tau)
    d_pad = 1 << max(0, (d - 1).bit_length())
    per_part = d_pad // tau
    parts = -(-num_hash // per_part)
    signs = torch.randint(0, 2, (n_b, parts, 3, d_pad), generator=g).double() * 2 - 1
    h = sylvester_hadamard(d_pad)
    padded = torch.nn.functional.pad(x, (0, d_pad - d))  # (B, n, d_pad)
    out = []
    for p in range(parts):
        y = padded
        for i in range(3):  # y <- H D_i y, as row vectors
            y = (y * signs[:, p, i, None, :]) @ h.T
        out.append(y[..., : per_part * tau].reshape(n_b, n, per_part, tau))
    return torch.cat(out, 2)[:, :, :num_hash]


CASES = [(3, 1, False), (3, 5, False), (16, 1, True), (16, 5, True), (20, 9, True), (20, 9, False), (64, 13, True)]


@pytest.mark.parametrize("d, tau, fast", CASES, ids=[f"d{d}-tau{t}-{'fast' if f else 'gauss'}" for d, t, f in CASES])
def test_codes_are_the_sign_bits_of_the_projections(backend, d, tau, fast):
    m, seed = 7, 3
    q, k = torch.randn(2, 30, d), torch.randn(2, 25, d)
    q_codes, k_codes = hash_codes(q, k, num_hash=m, hash_code_len=tau, fast_hash=fast,
                                  generator=torch.Generator().manual_seed(seed))  # fmt: skip
    both = projections(torch.cat([q, k], 1), m, tau, fast, seed)  # one draw for queries and keys
    for codes, proj in ((q_codes, both[:, :30]), (k_codes, both[:, 30:])):
        bits = (codes[..., None].long() >> torch.arange(tau)) & 1  # (B, n, m, tau): bit t of each code
        clear = proj.abs() > 1e-4 * proj.abs().amax()  # signs that rounding cannot flip
        assert clear.float().mean() > 0.99
        assert torch.equal(bits[clear], (proj[clear] > 0).long())
