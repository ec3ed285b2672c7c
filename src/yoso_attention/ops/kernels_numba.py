"""Numba CPU kernels: the fallback where the compiled ones (``csrc/cpu_kernels.cpp``, the same functions and loops)
were not built at install. Each has a portable torch twin in the op's own module.

All arrays are C-contiguous numpy views of CPU tensors (float32 data, int32 codes, bool masks); every
kernel is parallel over the flattened (batch x heads) axis ``B`` and keeps its working set (one hash
table, one block of projections) in cache. Rows (q, k, v and their gradients) are (batch, n, heads, d) arrays,
the memory of a model's heads (``layout.kernel_rows``; heads = 1 for flat rows): row b of the flattened axis is
[b // heads, :, b % heads]. Codes are laid out (B, num_hash, n) so that one hash function is a contiguous row.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_HASH_BLOCK = 256  # rows of x transformed together: (d_pad, 256) floats stay in L2 and vectorise over rows

# Abramowitz & Stegun 4.4.46: acos(x) = sqrt(1 - x) * poly(x) on [0, 1], |error| <= 2e-8.
_ACOS = (1.5707963050, -0.2145988016, 0.0889789874, -0.0501743046,
         0.0308918810, -0.0170881256, 0.0066700901, -0.0012624911)  # fmt: skip


@njit(inline="always", fastmath=True)
def _fwht_radix8(buf, h, cnt):
    """Three butterfly stages (strides h, 2h, 4h) in one sweep: 8 rows in registers, 1/3 of the traffic."""
    for a in range(0, buf.shape[0], 8 * h):
        for r in range(a, a + h):
            for i in range(cnt):
                x0, x1, x2, x3 = buf[r, i], buf[r + h, i], buf[r + 2 * h, i], buf[r + 3 * h, i]
                x4, x5, x6, x7 = buf[r + 4 * h, i], buf[r + 5 * h, i], buf[r + 6 * h, i], buf[r + 7 * h, i]
                y0, y1, y2, y3 = x0 + x1, x0 - x1, x2 + x3, x2 - x3
                y4, y5, y6, y7 = x4 + x5, x4 - x5, x6 + x7, x6 - x7
                z0, z1, z2, z3 = y0 + y2, y1 + y3, y0 - y2, y1 - y3
                z4, z5, z6, z7 = y4 + y6, y5 + y7, y4 - y6, y5 - y7
                buf[r, i], buf[r + h, i], buf[r + 2 * h, i], buf[r + 3 * h, i] = z0 + z4, z1 + z5, z2 + z6, z3 + z7
                buf[r + 4 * h, i], buf[r + 5 * h, i] = z0 - z4, z1 - z5
                buf[r + 6 * h, i], buf[r + 7 * h, i] = z2 - z6, z3 - z7


@njit(inline="always", fastmath=True)
def _fwht_rows(buf, d_pad, cnt):
    """In-place unnormalised Walsh-Hadamard transform along axis 0 of buf[:, :cnt]."""
    h = 1
    while 8 * h <= d_pad:
        _fwht_radix8(buf, h, cnt)
        h *= 8
    while h < d_pad:
        for a in range(0, d_pad, 2 * h):
            for r in range(a, a + h):
                for i in range(cnt):
                    x = buf[r, i]
                    y = buf[r + h, i]
                    buf[r, i] = x + y
                    buf[r + h, i] = x - y
        h *= 2


@njit(inline="always", fastmath=True)
def _wht4(a, b, c, d):
    s, t, u, w = a + b, a - b, c + d, c - d
    return s + u, t + w, s - u, t - w


@njit(inline="always", fastmath=True)
def _wht16(x):
    """Unnormalised Walsh-Hadamard transform of a 16-tuple as H4 (x) H4: output 4k + j is r_j[k]."""
    a, b = _wht4(x[0], x[1], x[2], x[3]), _wht4(x[4], x[5], x[6], x[7])
    c, e = _wht4(x[8], x[9], x[10], x[11]), _wht4(x[12], x[13], x[14], x[15])
    r0, r1 = _wht4(a[0], b[0], c[0], e[0]), _wht4(a[1], b[1], c[1], e[1])
    r2, r3 = _wht4(a[2], b[2], c[2], e[2]), _wht4(a[3], b[3], c[3], e[3])
    return (r0[0], r1[0], r2[0], r3[0], r0[1], r1[1], r2[1], r3[1],
            r0[2], r1[2], r2[2], r3[2], r0[3], r1[3], r2[3], r3[3])  # fmt: skip


@njit(inline="always")
def _signs16(signs, b, p, r):
    """signs[b, p, r] as a 16-tuple, so that the sign flips below stay in registers."""
    s = signs[b, p, r]
    return (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12], s[13], s[14], s[15])


@njit(inline="always", fastmath=True)
def _signed16(x, s):
    """x * s elementwise for a 16-tuple x and 16 signs s."""
    return (x[0] * s[0], x[1] * s[1], x[2] * s[2], x[3] * s[3], x[4] * s[4], x[5] * s[5], x[6] * s[6],
            x[7] * s[7], x[8] * s[8], x[9] * s[9], x[10] * s[10], x[11] * s[11], x[12] * s[12],
            x[13] * s[13], x[14] * s[14], x[15] * s[15])  # fmt: skip


@njit(inline="always")
def _bit(y, weight):
    return np.int32(weight) if y > 0 else np.int32(0)  # a select (and the sum an add): vectorises


@njit(inline="always")
def _sign_bits16(y):
    """sum_c [y[c] > 0] << c of a 16-tuple."""
    return (_bit(y[0], 1) + _bit(y[1], 2) + _bit(y[2], 4) + _bit(y[3], 8) + _bit(y[4], 16) + _bit(y[5], 32)
            + _bit(y[6], 64) + _bit(y[7], 128) + _bit(y[8], 256) + _bit(y[9], 512) + _bit(y[10], 1024)
            + _bit(y[11], 2048) + _bit(y[12], 4096) + _bit(y[13], 8192) + _bit(y[14], 16384) + _bit(y[15], 32768))


@njit(inline="always", fastmath=True)
def _hadamard3(x_t, signs, b, p, cnt, buf):
    """buf[:, :cnt] = H D3 H D2 H D1 x_t[:, :cnt] with the signs of part p, column by column."""
    for c in range(buf.shape[0]):
        s = signs[b, p, 0, c]
        for i in range(cnt):
            buf[c, i] = x_t[c, i] * s
    for stage in range(1, 3):
        _fwht_rows(buf, buf.shape[0], cnt)
        for c in range(buf.shape[0]):
            s = signs[b, p, stage, c]
            for i in range(cnt):
                buf[c, i] *= s
    _fwht_rows(buf, buf.shape[0], cnt)


@njit(inline="always", fastmath=True)
def _sign_code(buf, row0, tau, cnt, code):
    """code[i] = sum_bit [buf[row0 + bit, i] > 0] << bit."""
    for i in range(cnt):
        code[i] = 0
    for bit in range(tau):
        weight = np.int32(1 << bit)
        for i in range(cnt):  # a select and an add vectorise; (x > 0) << bit did not (2x slower)
            code[i] += weight if buf[row0 + bit, i] > 0 else np.int32(0)


@njit(inline="always", fastmath=True)
def _hadamard3_signs16(x_t, signs, b, p, cnt, bits):
    """bits[i] = sign pattern of H D3 H D2 H D1 x_t[:, i] for d_pad = 16. Each column stays in registers:
    the three transforms take one pass over x_t instead of nine passes over a scratch block."""
    s1, s2, s3 = _signs16(signs, b, p, 0), _signs16(signs, b, p, 1), _signs16(signs, b, p, 2)
    for i in range(cnt):
        x = (x_t[0, i], x_t[1, i], x_t[2, i], x_t[3, i], x_t[4, i], x_t[5, i], x_t[6, i], x_t[7, i],
             x_t[8, i], x_t[9, i], x_t[10, i], x_t[11, i], x_t[12, i], x_t[13, i], x_t[14, i], x_t[15, i])  # fmt: skip
        bits[i] = _sign_bits16(_wht16(_signed16(_wht16(_signed16(_wht16(_signed16(x, s1)), s2)), s3)))


@njit(inline="always")
def _transposed_block(x, t, n_blocks, x_t):
    """Block t % n_blocks of row b = t // n_blocks's rows of x (batch, n, heads, d), transposed into x_t[:d, :cnt];
    returns (b, i0, cnt): the block's first row and its length."""
    _, n, heads, d = x.shape
    b = t // n_blocks
    batch, head = b // heads, b % heads
    i0 = (t % n_blocks) * _HASH_BLOCK
    cnt = min(n, i0 + _HASH_BLOCK) - i0
    for i in range(cnt):
        for c in range(d):
            x_t[c, i] = x[batch, i0 + i, head, c]
    return b, i0, cnt


@njit(parallel=True, fastmath=True, cache=True)
def fast_hash_codes(x, signs, num_hash, tau, codes):
    """codes[b, h, i] = tau-bit sign code of (H D3 H D2 H D1 x_i) for hash h of rows x (batch, n, heads, d).

    signs: (B, parts, 3, d_pad) of +-1; part p gives hashes p*per_part ... from coordinates g*tau ...
    """
    n_b = codes.shape[0]
    d_pad = signs.shape[3]
    per_part = d_pad // tau
    n_blocks = (x.shape[1] + _HASH_BLOCK - 1) // _HASH_BLOCK
    for t in prange(n_b * n_blocks):
        x_t = np.zeros((d_pad, _HASH_BLOCK), dtype=np.float32)  # this block of x, transposed once
        b, i0, cnt = _transposed_block(x, t, n_blocks, x_t)
        buf = np.empty((d_pad, _HASH_BLOCK), dtype=np.float32)
        acc = np.empty(_HASH_BLOCK, dtype=np.int32)
        for p in range(signs.shape[1]):
            h0, n_here = p * per_part, min(per_part, num_hash - p * per_part)  # the hashes this part gives
            if d_pad == 16:
                _hadamard3_signs16(x_t, signs, b, p, cnt, acc)  # acc[i]: all 16 sign bits of column i
                for g in range(n_here):
                    for i in range(cnt):
                        codes[b, h0 + g, i0 + i] = (acc[i] >> (g * tau)) & ((1 << tau) - 1)
            else:
                _hadamard3(x_t, signs, b, p, cnt, buf)
                for g in range(n_here):
                    _sign_code(buf, g * tau, tau, cnt, acc)
                    for i in range(cnt):
                        codes[b, h0 + g, i0 + i] = acc[i]


@njit(parallel=True, fastmath=True, cache=True)
def gaussian_hash_codes(x, draws, num_hash, tau, codes):
    """codes[b, h, i] = tau-bit sign code of the projections x_i . draws[b, :, h * tau + bit] of rows x (batch, n,
    heads, d); draws (B, d, num_hash * tau). A block of rows at a time: no (n, num_hash * tau) buffer, no BLAS."""
    d = x.shape[3]
    n_b = codes.shape[0]
    width = num_hash * tau
    n_blocks = (x.shape[1] + _HASH_BLOCK - 1) // _HASH_BLOCK
    for t in prange(n_b * n_blocks):
        x_t = np.empty((d, _HASH_BLOCK), dtype=np.float32)
        b, i0, cnt = _transposed_block(x, t, n_blocks, x_t)
        buf = np.zeros((width, _HASH_BLOCK), dtype=np.float32)
        for c in range(d):
            for j in range(width):
                w = draws[b, c, j]
                for i in range(cnt):
                    buf[j, i] += w * x_t[c, i]
        acc = np.empty(_HASH_BLOCK, dtype=np.int32)
        for g in range(num_hash):
            _sign_code(buf, g * tau, tau, cnt, acc)
            for i in range(cnt):
                codes[b, g, i0 + i] = acc[i]


@njit(inline="always")
def _flat(x):
    """x (batch, n, heads, width) as (batch, n * heads, width): for heads = 1, row b of the flattened axis is x3[b]."""
    return x.reshape((x.shape[0], x.shape[1] * x.shape[2], x.shape[3]))


@njit(inline="always")
def _head_rows(x, x3, b):
    """Row b's (n, width) rows as a C-contiguous array: the view x3[b] (x3 = _flat(x)) for heads = 1, else a copy
    gathered from x. Kernels that revisit rows run on such copies: a head's rows read in place lie heads * width
    floats apart, and at 12 heads of 64 those 3 KB strides fall on a quarter of the cache sets (1.5-1.7x slower)."""
    heads = x.shape[2]
    if heads == 1:
        return x3[b]
    batch, head = b // heads, b % heads
    rows = np.empty((x.shape[1], x.shape[3]), dtype=np.float32)
    for i in range(x.shape[1]):
        for l in range(x.shape[3]):
            rows[i, l] = x[batch, i, head, l]
    return rows


@njit(inline="always")
def _head_out(x, x3, b):
    """Row b's output rows, to accumulate into: the view x3[b] of the caller's zeros for heads = 1, else zeros to
    be scattered back with _scatter_head."""
    if x.shape[2] == 1:
        return x3[b]
    return np.zeros((x.shape[1], x.shape[3]), dtype=np.float32)


@njit(inline="always")
def _scatter_head(rows, x, b):
    """Write row b's rows back into x (batch, n, heads, width) where _head_out gave a copy."""
    heads = x.shape[2]
    if heads == 1:
        return
    batch, head = b // heads, b % heads
    for i in range(x.shape[1]):
        for l in range(x.shape[3]):
            x[batch, i, head, l] = rows[i, l]


@njit(parallel=True, fastmath=True, cache=True)
def lsh_cumulation(q_codes, k_codes, v, q_mask, k_mask, n_buckets, out):
    """out[b, i] = q_mask[b, i] / m * sum_h T_h[q_codes[b, h, i]], T_h[c] = sum of unmasked v_j with code c; v and
    out rows (batch, n, heads, dv).

    Two hashes per pass: each v_j and each output row is loaded once for two tables (8-13% faster than one
    table per pass at n = 4096 and 16384; a runtime number of tables per pass was slower).
    """
    n_b, m, n_q = q_codes.shape
    n_k = k_codes.shape[2]
    heads, dv = v.shape[2], v.shape[3]
    v3 = _flat(v)
    scale = np.float32(1.0 / m)
    # With m odd, the last pass has no second hash: its keys go to scratch row n_buckets of table 1 and its
    # queries read row n_buckets + 1, which stays zero.
    key_scratch, query_scratch = n_buckets, n_buckets + 1
    for b in prange(n_b):
        batch, head = b // heads, b % heads
        vb = _head_rows(v, v3, b)  # (n_k, dv), read m / 2 times
        tables = np.empty((2, n_buckets + 2, dv), dtype=np.float32)
        acc = np.zeros((n_q, dv), dtype=np.float32)
        for h in range(0, m, 2):
            pair = h + 1 < m
            tables[:] = 0.0
            for j in range(n_k):
                if k_mask[b, j]:
                    c0 = k_codes[b, h, j]
                    c1 = k_codes[b, h + 1, j] if pair else key_scratch
                    for l in range(dv):
                        x = vb[j, l]
                        tables[0, c0, l] += x
                        tables[1, c1, l] += x
            for i in range(n_q):
                c0 = q_codes[b, h, i]
                c1 = q_codes[b, h + 1, i] if pair else query_scratch
                for l in range(dv):
                    acc[i, l] += tables[0, c0, l] + tables[1, c1, l]
        for i in range(n_q):
            s = scale if q_mask[b, i] else np.float32(0.0)
            for l in range(dv):
                out[batch, i, head, l] = acc[i, l] * s


@njit(inline="always")
def _bucket_sort(codes_row, mask_row, n_buckets, start, order):
    """Counting sort of the unmasked indices by code: bucket c holds order[start[c]:start[c+1]]."""
    start[:] = 0
    for i in range(codes_row.shape[0]):
        if mask_row[i]:
            start[codes_row[i] + 1] += 1
    for c in range(n_buckets):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    for i in range(codes_row.shape[0]):
        if mask_row[i]:
            c = codes_row[i]
            order[fill[c]] = i
            fill[c] += 1


@njit(inline="always")
def _crowded(nq, nk, d, dv):
    """A bucket is cheaper in the outer-product form (~(nq + nk) d dv) than pairwise (~nq nk (dv + 2d))."""
    return nq * nk * (dv + 2 * d) > 2 * (nq + nk) * d * dv


@njit(inline="always", fastmath=True)
def _sum_outer(idx, x, x_scale, y, mat):
    """mat = sum over the rows i in idx of (x_scale_i x_i) y_i^T; x, y one (batch x head) row's (n, width) rows."""
    mat[:] = 0.0
    for i in idx:
        for r in range(mat.shape[0]):
            xs = x[i, r] * x_scale[i]
            for l in range(mat.shape[1]):
                mat[r, l] += xs * y[i, l]


@njit(inline="always", fastmath=True)
def _add_products(idx, mat, y, out):
    """out_i += mat y_i for the rows i in idx."""
    for i in idx:
        for r in range(mat.shape[0]):
            s = np.float32(0.0)
            for l in range(mat.shape[1]):
                s += mat[r, l] * y[i, l]
            out[i, r] += s


@njit(inline="always", fastmath=True)
def _bucket_outer_products(q_idx, k_idx, q, k, q_inv, k_inv, v, dout, a_mat, b_mat, dq, dk):
    """One bucket's exact update as d x dv matrices: dq_i += A dout_i, A = sum_j kn_j v_j^T, and
    dk_j += B v_j, B = sum_i qn_i dout_i^T, over the queries q_idx and keys k_idx of the bucket (one
    (batch x head) row's arrays)."""
    _sum_outer(k_idx, k, k_inv, v, a_mat)
    _sum_outer(q_idx, q, q_inv, dout, b_mat)
    _add_products(q_idx, a_mat, dout, dq)
    _add_products(k_idx, b_mat, v, dk)


@njit(parallel=True, fastmath=True, cache=True)
def lsh_weighted_backward(q_codes, k_codes, q, k, q_inv, k_inv, v, dout, q_mask, k_mask, n_buckets, dq, dk):
    """Accumulate, over hashes and colliding unmasked pairs (i, j): w = dout_i . v_j,
    dq_i += w * kn_j, dk_j += w * qn_i, with the unit rows qn_i = q_inv_i q_i, kn_j = k_inv_j k_j formed as read
    (q_inv, k_inv (B, n): inverse row norms), so that the backward holds no copy of q and k. Rows q, k, v, dout,
    dq, dk are (batch, n, heads, width); dq and dk start at zero.

    Bucket-major, for buckets holding several keys: per hash, queries and keys are sorted by code, and each
    bucket takes the cheaper of two exact forms: the pairwise sum (cost ~ nq * nk * (dv + 2d)) or the
    outer-product form (cost ~ (nq + nk) * d * dv), so a hash table whose buckets are crowded never degrades
    to quadratic time.
    """
    n_b, m, n_q = q_codes.shape
    n_k = k_codes.shape[2]
    d, dv = q.shape[3], v.shape[3]
    q3, k3, v3, dout3, dq3, dk3 = _flat(q), _flat(k), _flat(v), _flat(dout), _flat(dq), _flat(dk)
    for b in prange(n_b):
        qb, kb, vb, ob = _head_rows(q, q3, b), _head_rows(k, k3, b), _head_rows(v, v3, b), _head_rows(dout, dout3, b)
        dqb, dkb = _head_out(dq, dq3, b), _head_out(dk, dk3, b)
        q_start = np.zeros(n_buckets + 1, dtype=np.int64)
        k_start = np.zeros(n_buckets + 1, dtype=np.int64)
        q_order = np.empty(n_q, dtype=np.int64)
        k_order = np.empty(n_k, dtype=np.int64)
        a_mat = np.empty((d, dv), dtype=np.float32)
        b_mat = np.empty((d, dv), dtype=np.float32)
        for h in range(m):
            _bucket_sort(q_codes[b, h], q_mask[b], n_buckets, q_start, q_order)
            _bucket_sort(k_codes[b, h], k_mask[b], n_buckets, k_start, k_order)
            for c in range(n_buckets):
                nq = q_start[c + 1] - q_start[c]
                nk = k_start[c + 1] - k_start[c]
                if nq == 0 or nk == 0:
                    continue
                if _crowded(nq, nk, d, dv):
                    _bucket_outer_products(q_order[q_start[c] : q_start[c + 1]], k_order[k_start[c] : k_start[c + 1]],
                                           qb, kb, q_inv[b], k_inv[b], vb, ob, a_mat, b_mat, dqb, dkb)  # fmt: skip
                    continue
                for ii in range(q_start[c], q_start[c + 1]):
                    i = q_order[ii]
                    for jj in range(k_start[c], k_start[c + 1]):
                        j = k_order[jj]
                        w = np.float32(0.0)
                        for l in range(dv):
                            w += ob[i, l] * vb[j, l]
                        wq, wk = w * k_inv[b, j], w * q_inv[b, i]
                        for l in range(d):
                            dqb[i, l] += wq * kb[j, l]
                            dkb[j, l] += wk * qb[i, l]
        _scatter_head(dqb, dq, b)
        _scatter_head(dkb, dk, b)


@njit(inline="always")
def _bucket_lists(codes, mask, n_buckets):
    """Per hash h, the unmasked rows of each bucket c as a linked list (head[h, c] the first, nxt[h, j] the
    one after row j, -1 ends) and the bucket sizes count[h, c]; codes (m, n)."""
    m, n = codes.shape
    head = np.full((m, n_buckets), -1, dtype=np.int32)
    count = np.zeros((m, n_buckets), dtype=np.int32)
    nxt = np.empty((m, n), dtype=np.int32)
    for h in range(m):
        for j in range(n):
            if mask[j]:
                c = codes[h, j]
                nxt[h, j] = head[h, c]
                head[h, c] = j
                count[h, c] += 1
    return head, nxt, count


@njit(inline="always")
def _unlink_crowded(q_codes, q_mask, head, k_count, d, dv):
    """Take the crowded buckets out of the key lists (head = -1) and mark them (k_count = -1); returns which
    hashes have any. q_codes (m, n). Only a bucket of more than 2 d dv / (dv + 2d) keys can be crowded,
    so most hashes of a sparse table skip counting their queries."""
    m, n_buckets = head.shape
    min_crowd = 2 * d * dv // (dv + 2 * d)
    has_crowded = np.zeros(m, dtype=np.bool_)
    q_count = np.zeros(n_buckets, dtype=np.int32)
    for h in range(m):
        if k_count[h].max() <= min_crowd:
            continue
        q_count[:] = 0
        for i in range(q_codes.shape[1]):
            if q_mask[i]:
                q_count[q_codes[h, i]] += 1
        for c in range(n_buckets):
            if _crowded(q_count[c], k_count[h, c], d, dv):
                head[h, c] = -1
                k_count[h, c] = -1
                has_crowded[h] = True
    return has_crowded


@njit(parallel=True, fastmath=True, cache=True)
def lsh_weighted_backward_sparse(q_codes, k_codes, q, k, q_inv, k_inv, v, dout, q_mask, k_mask, n_buckets, dq, dk):
    """``lsh_weighted_backward`` query-major, for tables with few keys per bucket (most buckets empty).

    Each query walks its bucket's key list under every hash, keeping its dq row in one accumulator: no sort
    and no pass over empty buckets. Crowded buckets (the same rule) are taken out of the lists and done in
    the outer-product form afterwards, hash by hash.
    """
    n_b, m, n_q = q_codes.shape
    n_k = k_codes.shape[2]
    d, dv = q.shape[3], v.shape[3]
    q3, k3, v3, dout3, dq3, dk3 = _flat(q), _flat(k), _flat(v), _flat(dout), _flat(dq), _flat(dk)
    for b in prange(n_b):
        qb, kb, vb, ob = _head_rows(q, q3, b), _head_rows(k, k3, b), _head_rows(v, v3, b), _head_rows(dout, dout3, b)
        dqb, dkb = _head_out(dq, dq3, b), _head_out(dk, dk3, b)
        first, nxt, k_count = _bucket_lists(k_codes[b], k_mask[b], n_buckets)
        has_crowded = _unlink_crowded(q_codes[b], q_mask[b], first, k_count, d, dv)
        acc = np.empty(d, dtype=np.float32)
        for i in range(n_q):
            if not q_mask[b, i]:
                continue
            acc[:] = 0.0
            qi_inv = q_inv[b, i]
            for h in range(m):
                j = first[h, q_codes[b, h, i]]
                while j >= 0:
                    w = np.float32(0.0)
                    for l in range(dv):
                        w += ob[i, l] * vb[j, l]
                    wq, wk = w * k_inv[b, j], w * qi_inv
                    for l in range(d):
                        acc[l] += wq * kb[j, l]
                        dkb[j, l] += wk * qb[i, l]
                    j = nxt[h, j]
            for l in range(d):
                dqb[i, l] += acc[l]
        if has_crowded.any():
            q_start, k_start = np.zeros(n_buckets + 1, dtype=np.int64), np.zeros(n_buckets + 1, dtype=np.int64)
            q_order, k_order = np.empty(n_q, dtype=np.int64), np.empty(n_k, dtype=np.int64)
            a_mat, b_mat = np.empty((d, dv), dtype=np.float32), np.empty((d, dv), dtype=np.float32)
            for h in range(m):
                if not has_crowded[h]:
                    continue
                _bucket_sort(q_codes[b, h], q_mask[b], n_buckets, q_start, q_order)
                _bucket_sort(k_codes[b, h], k_mask[b], n_buckets, k_start, k_order)
                for c in range(n_buckets):
                    if k_count[h, c] == -1:
                        _bucket_outer_products(q_order[q_start[c] : q_start[c + 1]],
                                               k_order[k_start[c] : k_start[c + 1]], qb, kb, q_inv[b], k_inv[b],
                                               vb, ob, a_mat, b_mat, dqb, dkb)  # fmt: skip
        _scatter_head(dqb, dq, b)
        _scatter_head(dkb, dk, b)


@njit(inline="always", fastmath=True)
def _prob_base_row(cos_row, base):
    """base[j] = 1 - acos(cos_row[j]) / pi, branch-free so that it vectorises (A&S 4.4.46)."""
    for j in range(cos_row.shape[0]):
        x = cos_row[j]
        ax = min(abs(x), np.float32(1.0))
        p = np.float32(_ACOS[7])
        p = p * ax + np.float32(_ACOS[6])
        p = p * ax + np.float32(_ACOS[5])
        p = p * ax + np.float32(_ACOS[4])
        p = p * ax + np.float32(_ACOS[3])
        p = p * ax + np.float32(_ACOS[2])
        p = p * ax + np.float32(_ACOS[1])
        p = p * ax + np.float32(_ACOS[0])
        r = math.sqrt(np.float32(1.0) - ax) * p * np.float32(1.0 / math.pi)  # acos(|x|) / pi
        base[j] = np.float32(1.0) - r if x >= 0 else r


@njit(inline="always", fastmath=True)
def _pow_row(base, e, out):
    """out[j] = base[j] ** e for an integer e >= 0, one vectorised sweep per multiplication."""
    for j in range(base.shape[0]):
        out[j] = np.float32(1.0)
    for _ in range(e):
        for j in range(base.shape[0]):
            out[j] *= base[j]


@njit(parallel=True, fastmath=True, cache=True)
def collision_prob_(cos, k_mask, tau):
    """In place: cos (B, L, S) -> k_mask * (1 - acos(clamp(cos)) / pi) ** tau; k_mask float (B, S)."""
    n_b, n_l, n_s = cos.shape
    for t in prange(n_b * n_l):
        b = t // n_l
        i = t % n_l
        base = np.empty(n_s, dtype=np.float32)
        _prob_base_row(cos[b, i], base)
        _pow_row(base, tau, cos[b, i])
        for j in range(n_s):
            cos[b, i, j] *= k_mask[b, j]


@njit(parallel=True, fastmath=True, cache=True)
def collision_prob_and_weight_(cos, dov, k_mask, tau, exact, eps):
    """In place, for the YOSO-E backward: cos -> P = masked collision probability, dov (= dO V^T) -> W.

    W = dov * (tau / 2) * P (the reference's surrogate) or dov * dP/dcos (exact; cos clamped to
    [-1 + eps, 1 - eps] where the derivative is singular). k_mask is float (B, S).
    """
    n_b, n_l, n_s = cos.shape
    half_tau = np.float32(tau / 2.0)
    for t in prange(n_b * n_l):
        b = t // n_l
        i = t % n_l
        base = np.empty(n_s, dtype=np.float32)
        low = np.empty(n_s, dtype=np.float32)
        _prob_base_row(cos[b, i], base)
        _pow_row(base, tau - 1, low)
        if exact:
            for j in range(n_s):
                c = min(max(cos[b, i, j], np.float32(-1.0) + eps), np.float32(1.0) - eps)
                dp = tau * low[j] / (np.float32(math.pi) * math.sqrt(np.float32(1.0) - c * c))
                dov[b, i, j] *= dp * k_mask[b, j]
        else:
            for j in range(n_s):
                dov[b, i, j] *= half_tau * low[j] * base[j] * k_mask[b, j]
        for j in range(n_s):
            cos[b, i, j] = low[j] * base[j] * k_mask[b, j]


@njit(parallel=True, fastmath=True, cache=True)
def unit_rows_backward(x, raw, norm, grad, eps, short_scale, out):
    """out[b, i] = (grad - xn (xn . grad)) / norm for rows with norm > eps, grad * short_scale otherwise; one pass.
    xn = x / norm for raw rows x, else x itself. out may be grad (each element is read before it is written)."""
    n_b, n, d = x.shape
    for t in prange(n_b * n):
        b = t // n
        i = t % n
        radial = np.float32(0.0)
        inv = np.float32(short_scale)
        if norm[b, i, 0] > eps:
            for l in range(d):
                radial += x[b, i, l] * grad[b, i, l]
            inv = np.float32(1.0) / norm[b, i, 0]
            if raw:
                radial *= inv * inv  # xn (xn . grad) = x (x . grad) / norm^2
        for l in range(d):
            out[b, i, l] = (grad[b, i, l] - x[b, i, l] * radial) * inv
