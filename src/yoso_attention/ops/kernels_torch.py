"""The portable torch path of the bucket ops (CUDA, or CPU without numba): the sampled cumulation and the sampled
backward's weighted sums, each in two forms, chosen per group of hashes by their cost:

- pairs: sort the keys by bucket; under each hash a query's bucket is a run of the sorted keys, and the colliding
  (query, key) pairs are enumerated in chunks and summed with ``index_add_``. Work grows with the number of
  collisions: O(m n) when queries collide with few keys, as at the large tau that long sequences use.
- tables: scatter the keys into one table of 2**tau buckets a hash and gather it at the queries' codes
  (the backward's weighted sums through tables of outer products). Work O(m (2**tau + n) d), whatever the
  collisions: the cheaper form when many keys share a bucket (small tau, aligned rows).

Layout as in ``cumulation``: codes (B, m, n), rows (B, n, d) float32, masks (B, n) bool. Scratch stays within a
few times ``SCRATCH_ELEMENTS`` floats and ``INDEX_ENTRIES`` index entries, or one hash's worth where that is more
(O(B (n + 2**tau) d)), whatever m.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

SCRATCH_ELEMENTS = 1 << 22  # floats of one step's scratch: a group of tables, or one chunk's gathered rows (16 MB)
INDEX_ENTRIES = 1 << 18  # (row, hash) entries of one collision search, ~7 int64 each (14 MB)


def _hash_groups(m: int, per_hash: int, budget: int) -> list[slice]:
    """Consecutive groups of the m hashes, each within budget at per_hash elements a hash (at least one hash)."""
    size = max(1, min(m, budget // max(1, per_hash)))
    return [slice(h, min(m, h + size)) for h in range(0, m, size)]


class _Collisions:
    """The colliding (query, key) pairs under some hashes. Keys sorted by bucket (each (batch row, hash) has its own
    2**tau buckets); under each hash a query's bucket is the run ``first``, ``count`` of the sorted keys. Masked keys
    are in no bucket, masked queries collide with nothing."""

    def __init__(self, q_codes: Tensor, k_codes: Tensor, q_mask: Tensor, k_mask: Tensor, n_buckets: int):
        n_b, m, n_q = q_codes.shape
        n_k = k_codes.shape[2]
        base = torch.arange(n_b * m, device=q_codes.device).view(n_b, m, 1) * n_buckets  # (B, m, 1)
        k_bucket = (k_codes.long() + base).masked_fill_(~k_mask[:, None], -1).flatten()  # (B m S), -1: no bucket
        sorted_bucket, order = torch.sort(k_bucket)
        self.k_row = order // (m * n_k) * n_k + order % n_k  # (B m S): row in the flat (B S) keys
        buckets, run_length = torch.unique_consecutive(sorted_bucket, return_counts=True)  # the keys' buckets
        run_start = run_length.cumsum(0).sub_(run_length)
        q_bucket = (q_codes.long() + base).flatten()  # (B m L)
        run = torch.searchsorted(buckets, q_bucket).clamp_(max=len(buckets) - 1)  # the run of q's bucket, if any
        hit = (buckets[run] == q_bucket) & q_mask[:, None].expand(n_b, m, n_q).reshape(-1)
        self.first, self.count = run_start[run], run_length[run].mul_(hit)
        self.n_q, self.hashes = n_q, m
        self.total = int(self.count.sum())
        self.table_rows = n_b * m * (n_buckets + n_q + n_k)  # rows the table form writes and reads

    def cheaper_than_tables(self, work_per_pair: int, work_per_table_row: int) -> bool:
        return self.total * work_per_pair <= self.table_rows * work_per_table_row

    def chunks(self, max_pairs: int) -> Iterator[tuple[Tensor, Tensor]]:
        """(q_rows, k_rows) of the pairs, rows of the flat (B L) queries and (B S) keys, in chunks of at most
        max_pairs plus one query's run; a pair that collides under several hashes comes once for each."""
        start = self.count.cumsum(0).sub_(self.count)  # (B m L): each query entry's first pair
        device = start.device
        bounds = torch.searchsorted(start, torch.arange(0, self.total, max(1, max_pairs), device=device)).tolist()
        for e0, e1 in zip(bounds, bounds[1:] + [len(start)]):
            count = self.count[e0:e1]
            n_pairs = int(count.sum()) if e1 > e0 else 0
            if n_pairs == 0:
                continue
            entry = torch.repeat_interleave(torch.arange(e0, e1, device=device), count, output_size=n_pairs)
            run_start = torch.repeat_interleave(start[e0:e1] - start[e0], count, output_size=n_pairs)
            in_run = torch.arange(n_pairs, device=device) - run_start  # (P,) position within the query's run
            q_rows = entry // (self.hashes * self.n_q) * self.n_q + entry % self.n_q
            yield q_rows, self.k_row[self.first[entry] + in_run]


def _table_cumulate(q_codes: Tensor, k_codes: Tensor, v: Tensor, n_buckets: int) -> Tensor:
    """sum_h sum_j [q_codes[h, i] == k_codes[h, j]] v_j over the given hashes, through tables of buckets; masked
    keys must hold zero rows of v."""
    n_b, m, n_q = q_codes.shape
    n_k, dv = v.shape[1], v.shape[2]
    out = v.new_zeros(n_b, n_q, dv)
    for hashes in _hash_groups(m, n_b * max(n_q, n_k, n_buckets) * dv, SCRATCH_ELEMENTS):
        hc = hashes.stop - hashes.start
        offsets = torch.arange(hc, device=v.device)[:, None] * n_buckets  # (hc, 1)
        k_idx = (k_codes[:, hashes].long() + offsets).reshape(n_b, hc * n_k, 1)
        q_idx = (q_codes[:, hashes].long() + offsets).reshape(n_b, hc * n_q, 1)
        src = v[:, None].expand(n_b, hc, n_k, dv).reshape(n_b, hc * n_k, dv)
        table = v.new_zeros(n_b, hc * n_buckets, dv).scatter_add_(1, k_idx.expand(-1, -1, dv), src)
        out += table.gather(1, q_idx.expand(-1, -1, dv)).view(n_b, hc, n_q, dv).sum(1)
    return out


def _table_weighted(codes_out: Tensor, codes_in: Tensor, a_out: Tensor, a_in: Tensor, b_in: Tensor,
                    n_buckets: int) -> Tensor:  # fmt: skip
    """sum_h sum_j [collide] (a_out_i . a_in_j) b_in_j over the given hashes, as tables of the outer products
    a_in_j b_in_j^T in slices of a's dimension; masked rows must be zero."""
    n_b, n_in, da = a_in.shape
    d = b_in.shape[2]
    out = b_in.new_zeros(n_b, codes_out.shape[2], d)
    step = max(1, SCRATCH_ELEMENTS // max(1, n_b * n_in * d))
    for l0 in range(0, da, step):
        part = slice(l0, min(da, l0 + step))
        outer = (a_in[:, :, part, None] * b_in[:, :, None, :]).reshape(n_b, n_in, -1)  # (B, S, l * d)
        table = _table_cumulate(codes_out, codes_in, outer, n_buckets).view(n_b, -1, part.stop - l0, d)
        out += torch.einsum("bil,bild->bid", a_out[:, :, part], table)
    return out


def cumulate(q_codes: Tensor, k_codes: Tensor, v: Tensor, q_mask: Tensor, k_mask: Tensor, n_buckets: int) -> Tensor:
    """out_i = q_mask_i / m * sum_h sum_j k_mask_j [q_codes[h, i] == k_codes[h, j]] v_j, (B, L, dv)."""
    n_b, m, n_q = q_codes.shape
    n_k, dv = v.shape[1], v.shape[2]
    v = v.masked_fill(~k_mask[..., None], 0.0)  # not v * mask: padding may hold anything, NaN included
    out = v.new_zeros(n_b, n_q, dv)  # the op's output: not a view (index_add_ writes through out_rows)
    v_rows, out_rows = v.view(n_b * n_k, dv), out.view(n_b * n_q, dv)
    for hashes in _hash_groups(m, n_b * max(n_q, n_k), INDEX_ENTRIES):
        found = _Collisions(q_codes[:, hashes], k_codes[:, hashes], q_mask, k_mask, n_buckets)
        if found.cheaper_than_tables(dv, dv):
            for q_rows, k_rows in found.chunks(SCRATCH_ELEMENTS // dv):
                out_rows.index_add_(0, q_rows, v_rows[k_rows])
        else:
            out += _table_cumulate(q_codes[:, hashes], k_codes[:, hashes], v, n_buckets)
    return out.div_(m).masked_fill_(~q_mask[..., None], 0.0)


def weighted_backward(q_codes: Tensor, k_codes: Tensor, q: Tensor, k: Tensor, q_norm: Tensor, k_norm: Tensor,
                      v: Tensor, dout: Tensor, q_mask: Tensor, k_mask: Tensor, n_buckets: int
                      ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(dqn, dkn): dqn_i = sum_h sum_{j collides} (dout_i . v_j) kn_j, dkn_j = sum_h sum_{i collides} (dout_i . v_j)
    qn_i over unmasked pairs, with qn = q / q_norm and kn = k / k_norm."""
    n_b, m, n_q = q_codes.shape
    n_k, d, dv = k.shape[1], k.shape[2], v.shape[2]
    qn = (q / q_norm).masked_fill_(~q_mask[..., None], 0.0)  # (B, L, d); masked rows zero for the table form
    kn = (k / k_norm).masked_fill_(~k_mask[..., None], 0.0)  # (B, S, d)
    v, dout = v.masked_fill(~k_mask[..., None], 0.0), dout.masked_fill(~q_mask[..., None], 0.0)
    qn_rows, dout_rows = qn.view(n_b * n_q, d), dout.view(n_b * n_q, dv)
    kn_rows, v_rows = kn.view(n_b * n_k, d), v.view(n_b * n_k, dv)
    dq, dk = q.new_zeros(n_b, n_q, d), k.new_zeros(n_b, n_k, d)  # the op's outputs, written through their row views
    dq_rows, dk_rows = dq.view(n_b * n_q, d), dk.view(n_b * n_k, d)
    for hashes in _hash_groups(m, n_b * max(n_q, n_k), INDEX_ENTRIES):
        found = _Collisions(q_codes[:, hashes], k_codes[:, hashes], q_mask, k_mask, n_buckets)
        if found.cheaper_than_tables(2 * dv + 4 * d, 2 * d * dv):  # gathers and sums a pair; two outer-product tables
            for q_rows, k_rows in found.chunks(SCRATCH_ELEMENTS // (2 * (d + dv))):
                weight = (dout_rows[q_rows] * v_rows[k_rows]).sum(1, keepdim=True)  # (P, 1): dout_i . v_j
                dq_rows.index_add_(0, q_rows, weight * kn_rows[k_rows])
                dk_rows.index_add_(0, k_rows, weight * qn_rows[q_rows])
        else:
            q_part, k_part = q_codes[:, hashes], k_codes[:, hashes]
            dq += _table_weighted(q_part, k_part, dout, v, kn, n_buckets)
            dk += _table_weighted(k_part, q_part, v, dout, qn, n_buckets)
    return dq, dk
