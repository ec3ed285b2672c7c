// Ahead-of-time compiled CPU kernels of the ops: the numba kernels (kernels_numba.py) in C++ with OpenMP, loaded
// through ctypes by kernels_cpp.py. Same arrays, same loops, same results; no JIT runtime in the process (numba's
// costs ~105 MB of resident memory once loaded). The comments of kernels_numba.py explain the algorithms; here
// only what differs is said.
//
// Arrays are C-contiguous: rows (batch, n, heads, width) float32, codes (B, m, n) of type C (uint8, int16 or
// int32, by tau), masks (B, n) of bytes, B = batch * heads with row b = [b / heads, :, b % heads]. Every kernel
// is parallel over B (or B x blocks) with its scratch allocated once per thread, by the calling thread and on cache
// lines of its own (per_thread, buffer). Built with reassociation allowed (vectorised sums) but without
// -ffinite-math-only: NaN and inf keep their IEEE meaning.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include <omp.h>

#ifdef _WIN32
#define YOSO_EXPORT extern "C" __declspec(dllexport)
#else
#define YOSO_EXPORT extern "C" __attribute__((visibility("default")))
#endif

using i64 = int64_t;
using u8 = uint8_t;

namespace {

constexpr double PI = 3.14159265358979323846;
constexpr i64 HASH_BLOCK = 64;  // rows of x hashed together: a block of x (d x 64 floats) stays in L1 up to d = 128
constexpr float ACOS[8] = {1.5707963050f, -0.2145988016f, 0.0889789874f, -0.0501743046f,
                           0.0308918810f, -0.0170881256f, 0.0066700901f, -0.0012624911f};

// Storage on whole cache lines of its own: the scratch of different threads, all made by one thread (per_thread),
// never shares a line that both write.
template <typename T>
struct LineAllocator {
    using value_type = T;
    static constexpr std::size_t LINE = 64;
    LineAllocator() = default;
    template <typename U>
    LineAllocator(const LineAllocator<U>&) {}
    T* allocate(std::size_t n) {
        const std::size_t bytes = (n * sizeof(T) + LINE - 1) / LINE * LINE;
        return static_cast<T*>(::operator new(bytes, std::align_val_t(LINE)));
    }
    void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(LINE)); }
    template <typename U>
    bool operator==(const LineAllocator<U>&) const { return true; }
    template <typename U>
    bool operator!=(const LineAllocator<U>&) const { return false; }
};
template <typename T>
using buffer = std::vector<T, LineAllocator<T>>;

// Each thread's scratch, made by the calling thread before the parallel region (thread t takes element
// omp_get_thread_num()): glibc serves a worker thread's allocations from an arena of its own, which keeps its pages
// after the kernel returns, while the calling thread's come from the main heap, where they can reuse the holes freed
// tensors leave.
template <typename Make>
auto per_thread(int threads, Make make) {
    std::vector<decltype(make())> scratch;
    scratch.reserve(std::max(threads, 1));
    for (int t = 0; t < std::max(threads, 1); ++t) scratch.push_back(make());
    return scratch;
}

// ---------------------------------------------------------------- hashing

// One radix-8 sweep (butterfly stages h, 2h, 4h) over the rows of buf (stride ld), columns [0, cnt): 8 rows in
// registers, a third of the memory traffic of three radix-2 sweeps. With signs, row r is multiplied by signs[r] as
// it is loaded (the sign flip before a transform, without a pass of its own).
template <bool SIGNED>
void radix8_sweep(float* buf, i64 d_pad, i64 ld, i64 cnt, i64 h, const float* signs) {
    for (i64 a = 0; a < d_pad; a += 8 * h) {
        for (i64 r = a; r < a + h; ++r) {
            float* p[8];
            float sg[8];
            for (int s = 0; s < 8; ++s) {
                p[s] = buf + (r + s * h) * ld;
                sg[s] = SIGNED ? signs[r + s * h] : 1.0f;
            }
#pragma omp simd  // the eight rows never overlap
            for (i64 i = 0; i < cnt; ++i) {
                float x[8];
                for (int s = 0; s < 8; ++s) x[s] = SIGNED ? p[s][i] * sg[s] : p[s][i];
                float y0 = x[0] + x[1], y1 = x[0] - x[1], y2 = x[2] + x[3], y3 = x[2] - x[3];
                float y4 = x[4] + x[5], y5 = x[4] - x[5], y6 = x[6] + x[7], y7 = x[6] - x[7];
                float z0 = y0 + y2, z1 = y1 + y3, z2 = y0 - y2, z3 = y1 - y3;
                float z4 = y4 + y6, z5 = y5 + y7, z6 = y4 - y6, z7 = y5 - y7;
                p[0][i] = z0 + z4; p[1][i] = z1 + z5; p[2][i] = z2 + z6; p[3][i] = z3 + z7;
                p[4][i] = z0 - z4; p[5][i] = z1 - z5; p[6][i] = z2 - z6; p[7][i] = z3 - z7;
            }
        }
    }
}

// buf <- H diag(signs) buf: the unnormalised Walsh-Hadamard transform along the rows of buf (d_pad rows of stride
// ld, a power of two), columns [0, cnt), after the sign flip.
void signed_fwht_rows(float* buf, i64 d_pad, i64 ld, i64 cnt, const float* signs) {
    i64 h = 1;
    if (d_pad >= 8) {
        radix8_sweep<true>(buf, d_pad, ld, cnt, 1, signs);
        h = 8;
    } else {
        for (i64 c = 0; c < d_pad; ++c) {
#pragma omp simd
            for (i64 i = 0; i < cnt; ++i) buf[c * ld + i] *= signs[c];
        }
    }
    for (; 8 * h <= d_pad; h *= 8) radix8_sweep<false>(buf, d_pad, ld, cnt, h, nullptr);
    for (; h < d_pad; h *= 2) {
        for (i64 a = 0; a < d_pad; a += 2 * h) {
            for (i64 r = a; r < a + h; ++r) {
                float* x = buf + r * ld;
                float* y = buf + (r + h) * ld;
#pragma omp simd
                for (i64 i = 0; i < cnt; ++i) {
                    float s = x[i], t = y[i];
                    x[i] = s + t;
                    y[i] = s - t;
                }
            }
        }
    }
}

// buf = H D3 H D2 H D1 x_t (columns [0, cnt)), signs: the (3, d_pad) signs of one part.
void hadamard3(const float* x_t, const float* signs, i64 d_pad, i64 cnt, float* buf) {
    for (i64 c = 0; c < d_pad; ++c) std::memcpy(buf + c * HASH_BLOCK, x_t + c * HASH_BLOCK, cnt * sizeof(float));
    for (int stage = 0; stage < 3; ++stage) signed_fwht_rows(buf, d_pad, HASH_BLOCK, cnt, signs + stage * d_pad);
}

// code[i] = sum_bit [buf[row0 + bit, i] > 0] << bit
void sign_code(const float* buf, i64 row0, i64 tau, i64 cnt, int32_t* code) {
    for (i64 i = 0; i < cnt; ++i) code[i] = 0;
    for (i64 bit = 0; bit < tau; ++bit) {
        const int32_t weight = int32_t(1) << bit;
        const float* row = buf + (row0 + bit) * HASH_BLOCK;
#pragma omp simd
        for (i64 i = 0; i < cnt; ++i) code[i] += row[i] > 0.0f ? weight : 0;
    }
}

// Block t % n_blocks of row b = t / n_blocks's rows of x (batch, n, heads, d), transposed into x_t (d rows of
// HASH_BLOCK): the block's row b, first row i0 and length cnt.
struct Block {
    i64 b, i0, cnt;
};

Block transposed_block(const float* x, i64 n, i64 heads, i64 d, i64 t, i64 n_blocks, float* x_t) {
    const i64 b = t / n_blocks, row_batch = b / heads, head = b % heads;
    const i64 i0 = (t % n_blocks) * HASH_BLOCK, cnt = std::min(n, i0 + HASH_BLOCK) - i0;
    for (i64 i = 0; i < cnt; ++i) {
        const float* xi = x + ((row_batch * n + i0 + i) * heads + head) * d;
        for (i64 c = 0; c < d; ++c) x_t[c * HASH_BLOCK + i] = xi[c];
    }
    return {b, i0, cnt};
}

// A hashing thread's block of rows transposed (x_rows x HASH_BLOCK, zeroed), its projections (buf_rows x
// HASH_BLOCK), the projection matrix it holds (w_size floats, zeroed) and a block of codes.
struct HashScratch {
    buffer<float> x_t, buf, w;
    buffer<int32_t> acc;
    HashScratch(i64 x_rows, i64 buf_rows, i64 w_size)
        : x_t(x_rows * HASH_BLOCK, 0.0f), buf(buf_rows * HASH_BLOCK), w(w_size, 0.0f), acc(HASH_BLOCK) {}
};

template <typename C>
void fast_hash_codes(const float* x, i64 batch, i64 n, i64 heads, i64 d, const float* signs, i64 parts, i64 d_pad,
                     i64 num_hash, i64 tau, C* codes, int threads) {
    const i64 n_b = batch * heads, per_part = d_pad / tau, n_blocks = (n + HASH_BLOCK - 1) / HASH_BLOCK;
    auto scratch = per_thread(threads, [&] { return HashScratch(d_pad, d_pad, 0); });  // x_t's rows d.. stay zero
#pragma omp parallel num_threads(threads)
    {
        HashScratch& s = scratch[omp_get_thread_num()];
#pragma omp for schedule(static)
        for (i64 t = 0; t < n_b * n_blocks; ++t) {
            const auto [b, i0, cnt] = transposed_block(x, n, heads, d, t, n_blocks, s.x_t.data());
            for (i64 p = 0; p < parts; ++p) {
                const i64 h0 = p * per_part, n_here = std::min(per_part, num_hash - h0);
                hadamard3(s.x_t.data(), signs + (b * parts + p) * 3 * d_pad, d_pad, cnt, s.buf.data());
                for (i64 g = 0; g < n_here; ++g) {
                    sign_code(s.buf.data(), g * tau, tau, cnt, s.acc.data());
                    C* out = codes + (b * num_hash + h0 + g) * n + i0;
                    for (i64 i = 0; i < cnt; ++i) out[i] = C(s.acc[i]);
                }
            }
        }
    }
}

// buf[j, i] = sum_c w[c, j] x_t[c, i] for j < width (w: d x width_pad, zero-padded to a multiple of 8 columns),
// i < HASH_BLOCK: 8 columns x 16 rows of accumulators stay in registers over c, and the 16 rows' strip of x_t
// (d x 16 floats) stays in L1 over all columns.
void project_block(const float* x_t, i64 d, const float* w, i64 width_pad, float* buf) {
    typedef float v16 __attribute__((vector_size(64)));  // 16 rows: one AVX-512 register, two AVX2 ones
    for (i64 i0 = 0; i0 < HASH_BLOCK; i0 += 16) {
        for (i64 j0 = 0; j0 < width_pad; j0 += 8) {
            v16 acc[8] = {};
            for (i64 c = 0; c < d; ++c) {
                v16 xc;
                std::memcpy(&xc, x_t + c * HASH_BLOCK + i0, sizeof(xc));
                const float* wc = w + c * width_pad + j0;
#pragma GCC unroll 8
                for (int jj = 0; jj < 8; ++jj) acc[jj] += wc[jj] * xc;
            }
            for (int jj = 0; jj < 8; ++jj) std::memcpy(buf + (j0 + jj) * HASH_BLOCK + i0, &acc[jj], sizeof(v16));
        }
    }
}

// codes[b, h, i] = sign code of the Gaussian projections x_i . draws[b, :, h * tau + bit] of rows x (batch, n,
// heads, d); draws (B, d, num_hash * tau). The projections are made a block of rows at a time in cache: no
// (n, num_hash * tau) buffer, no BLAS call.
template <typename C>
void gaussian_hash_codes(const float* x, i64 batch, i64 n, i64 heads, i64 d, const float* draws, i64 num_hash,
                         i64 tau, C* codes, int threads) {
    const i64 n_b = batch * heads, n_blocks = (n + HASH_BLOCK - 1) / HASH_BLOCK;
    const i64 width = num_hash * tau, width_pad = (width + 7) / 8 * 8;
    auto scratch = per_thread(threads, [&] { return HashScratch(d, width_pad, d * width_pad); });
#pragma omp parallel num_threads(threads)
    {
        HashScratch& s = scratch[omp_get_thread_num()];
        i64 w_of = -1;  // the row b whose draw s.w holds
#pragma omp for schedule(static)
        for (i64 t = 0; t < n_b * n_blocks; ++t) {
            const auto [b, i0, cnt] = transposed_block(x, n, heads, d, t, n_blocks, s.x_t.data());
            if (w_of != b) {
                for (i64 c = 0; c < d; ++c)
                    std::memcpy(s.w.data() + c * width_pad, draws + (b * d + c) * width, width * sizeof(float));
                w_of = b;
            }
            project_block(s.x_t.data(), d, s.w.data(), width_pad, s.buf.data());
            for (i64 g = 0; g < num_hash; ++g) {
                sign_code(s.buf.data(), g * tau, tau, cnt, s.acc.data());
                C* out = codes + (b * num_hash + g) * n + i0;
                for (i64 i = 0; i < cnt; ++i) out[i] = C(s.acc[i]);
            }
        }
    }
}

// ---------------------------------------------------------------- rows of one (batch x head)

// Row b's (n, width) rows, contiguous: a pointer into x for heads = 1, else gathered into scratch (see
// kernels_numba._head_rows for why kernels that revisit rows work on such copies). head_scratch sizes scratch
// beforehand, so that a worker thread allocates nothing.
const float* head_rows(const float* x, i64 n, i64 heads, i64 width, i64 b, buffer<float>& scratch) {
    if (heads == 1) return x + b * n * width;
    const i64 row_batch = b / heads, head = b % heads;
    scratch.resize(n * width);
    for (i64 i = 0; i < n; ++i)
        std::memcpy(scratch.data() + i * width, x + ((row_batch * n + i) * heads + head) * width, width * sizeof(float));
    return scratch.data();
}

// Row b's rows to accumulate into: x's own (zeroed by the caller) for heads = 1, else zeroed scratch.
float* head_out(float* x, i64 n, i64 heads, i64 width, i64 b, buffer<float>& scratch) {
    if (heads == 1) return x + b * n * width;
    scratch.assign(n * width, 0.0f);
    return scratch.data();
}

buffer<float> head_scratch(i64 n, i64 heads, i64 width) { return buffer<float>(heads == 1 ? 0 : n * width); }

void scatter_head(const float* rows, float* x, i64 n, i64 heads, i64 width, i64 b) {
    if (heads == 1) return;
    const i64 row_batch = b / heads, head = b % heads;
    for (i64 i = 0; i < n; ++i)
        std::memcpy(x + ((row_batch * n + i) * heads + head) * width, rows + i * width, width * sizeof(float));
}

// ---------------------------------------------------------------- cumulation

// out[b, i] = q_mask[b, i] / m * sum_h T_h[q_codes[b, h, i]], T_h[c] = sum of unmasked v_j with code c; two
// tables per pass (an odd m's last pass sends its keys to scratch row n_buckets and reads zero row n_buckets + 1).
template <typename C>
void lsh_cumulation(const C* q_codes, const C* k_codes, i64 n_b, i64 m, i64 n_q, i64 n_k, const float* v, i64 heads,
                    i64 dv, const u8* q_mask, const u8* k_mask, i64 n_buckets, float* out, int threads) {
    const float scale = 1.0f / float(m);
    const i64 key_scratch = n_buckets, query_scratch = n_buckets + 1, rows = n_buckets + 2;
    struct CumulationScratch {
        buffer<float> v, tables, acc;
    };
    auto scratch = per_thread(threads, [&] {
        return CumulationScratch{head_scratch(n_k, heads, dv), buffer<float>(2 * rows * dv),
                                 buffer<float>(n_q * dv)};
    });
#pragma omp parallel num_threads(threads)
    {
        auto& [v_scratch, tables, acc] = scratch[omp_get_thread_num()];
#pragma omp for schedule(static)
        for (i64 b = 0; b < n_b; ++b) {
            const float* vb = head_rows(v, n_k, heads, dv, b, v_scratch);
            float* t0 = tables.data();
            float* t1 = t0 + rows * dv;
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (i64 h = 0; h < m; h += 2) {
                const bool pair = h + 1 < m;
                const C* kc0 = k_codes + (b * m + h) * n_k;
                const C* qc0 = q_codes + (b * m + h) * n_q;
                std::fill(tables.begin(), tables.end(), 0.0f);
                for (i64 j = 0; j < n_k; ++j) {
                    if (!k_mask[b * n_k + j]) continue;
                    float* r0 = t0 + i64(kc0[j]) * dv;
                    float* r1 = t1 + (pair ? i64(kc0[n_k + j]) : key_scratch) * dv;
                    const float* x = vb + j * dv;
                    for (i64 l = 0; l < dv; ++l) {
                        r0[l] += x[l];
                        r1[l] += x[l];
                    }
                }
                for (i64 i = 0; i < n_q; ++i) {
                    const float* r0 = t0 + i64(qc0[i]) * dv;
                    const float* r1 = t1 + (pair ? i64(qc0[n_q + i]) : query_scratch) * dv;
                    float* a = acc.data() + i * dv;
                    for (i64 l = 0; l < dv; ++l) a[l] += r0[l] + r1[l];
                }
            }
            const i64 row_batch = b / heads, head = b % heads;
            for (i64 i = 0; i < n_q; ++i) {
                const float s = q_mask[b * n_q + i] ? scale : 0.0f;
                float* o = out + ((row_batch * n_q + i) * heads + head) * dv;
                const float* a = acc.data() + i * dv;
                for (i64 l = 0; l < dv; ++l) o[l] = a[l] * s;
            }
        }
    }
}

// ---------------------------------------------------------------- weighted backward

// The unit-row inputs of one (batch x head) row, and where its gradients accumulate.
struct HeadRows {
    const float *q, *k, *v, *dout, *q_inv, *k_inv;
    float *dq, *dk;
    i64 d, dv;
};

// Counting sort of the unmasked indices by code: bucket c holds order[start[c]:start[c + 1]].
template <typename C>
void bucket_sort(const C* codes, const u8* mask, i64 n, i64 n_buckets, buffer<i64>& start,
                 buffer<i64>& fill, buffer<i64>& order) {
    std::fill(start.begin(), start.end(), 0);
    for (i64 i = 0; i < n; ++i)
        if (mask[i]) ++start[i64(codes[i]) + 1];
    for (i64 c = 0; c < n_buckets; ++c) start[c + 1] += start[c];
    std::copy(start.begin(), start.end() - 1, fill.begin());
    for (i64 i = 0; i < n; ++i)
        if (mask[i]) order[fill[i64(codes[i])]++] = i;
}

inline bool crowded(i64 nq, i64 nk, i64 d, i64 dv) { return nq * nk * (dv + 2 * d) > 2 * (nq + nk) * d * dv; }

// mat = sum over the rows i in idx of (x_scale_i x_i) y_i^T, mat (width_x, width_y)
void sum_outer(const i64* idx, i64 count, const float* x, const float* x_scale, i64 wx, const float* y, i64 wy,
               float* mat) {
    std::fill(mat, mat + wx * wy, 0.0f);
    for (i64 t = 0; t < count; ++t) {
        const i64 i = idx[t];
        for (i64 r = 0; r < wx; ++r) {
            const float xs = x[i * wx + r] * x_scale[i];
            float* row = mat + r * wy;
            for (i64 l = 0; l < wy; ++l) row[l] += xs * y[i * wy + l];
        }
    }
}

// out_i += mat y_i for the rows i in idx
void add_products(const i64* idx, i64 count, const float* mat, i64 wo, const float* y, i64 wy, float* out) {
    for (i64 t = 0; t < count; ++t) {
        const i64 i = idx[t];
        for (i64 r = 0; r < wo; ++r) {
            float s = 0.0f;
            for (i64 l = 0; l < wy; ++l) s += mat[r * wy + l] * y[i * wy + l];
            out[i * wo + r] += s;
        }
    }
}

// One bucket's exact update as d x dv matrices: dq_i += A dout_i, A = sum_j kn_j v_j^T; dk_j += B v_j,
// B = sum_i qn_i dout_i^T.
void bucket_outer_products(const i64* q_idx, i64 nq, const i64* k_idx, i64 nk, const HeadRows& r, float* a_mat,
                           float* b_mat) {
    sum_outer(k_idx, nk, r.k, r.k_inv, r.d, r.v, r.dv, a_mat);
    sum_outer(q_idx, nq, r.q, r.q_inv, r.d, r.dout, r.dv, b_mat);
    add_products(q_idx, nq, a_mat, r.d, r.dout, r.dv, r.dq);
    add_products(k_idx, nk, b_mat, r.d, r.v, r.dv, r.dk);
}

// The pairwise update of one colliding pair (i, j); dq_i goes to acc_q.
inline void pair_update(const HeadRows& r, i64 i, i64 j, float* acc_q) {
    const float* oi = r.dout + i * r.dv;
    const float* vj = r.v + j * r.dv;
    float w = 0.0f;
    for (i64 l = 0; l < r.dv; ++l) w += oi[l] * vj[l];
    const float wq = w * r.k_inv[j], wk = w * r.q_inv[i];
    const float* kj = r.k + j * r.d;
    const float* qi = r.q + i * r.d;
    float* dkj = r.dk + j * r.d;
    for (i64 l = 0; l < r.d; ++l) {
        acc_q[l] += wq * kj[l];
        dkj[l] += wk * qi[l];
    }
}

// Per-thread scratch of the weighted backwards.
struct Scratch {
    buffer<float> q, k, v, dout, dq, dk, a_mat, b_mat, acc;
    buffer<i64> q_start, k_start, fill, q_order, k_order;
    Scratch(i64 n_q, i64 n_k, i64 heads, i64 d, i64 dv, i64 n_buckets)
        : q(head_scratch(n_q, heads, d)), k(head_scratch(n_k, heads, d)), v(head_scratch(n_k, heads, dv)),
          dout(head_scratch(n_q, heads, dv)), dq(head_scratch(n_q, heads, d)), dk(head_scratch(n_k, heads, d)),
          a_mat(d * dv), b_mat(d * dv), acc(d), q_start(n_buckets + 1), k_start(n_buckets + 1), fill(n_buckets),
          q_order(n_q), k_order(n_k) {}
};

HeadRows gather_rows(const float* q, const float* k, const float* v, const float* dout, const float* q_inv,
                     const float* k_inv, float* dq, float* dk, i64 n_q, i64 n_k, i64 heads, i64 d, i64 dv, i64 b,
                     Scratch& s) {
    return HeadRows{head_rows(q, n_q, heads, d, b, s.q),       head_rows(k, n_k, heads, d, b, s.k),
                    head_rows(v, n_k, heads, dv, b, s.v),      head_rows(dout, n_q, heads, dv, b, s.dout),
                    q_inv + b * n_q,                           k_inv + b * n_k,
                    head_out(dq, n_q, heads, d, b, s.dq),      head_out(dk, n_k, heads, d, b, s.dk),
                    d,                                         dv};
}

// One hash's buckets holding both queries and keys: fn(c, query indices, nq, key indices, nk), after a counting
// sort of each side by code.
template <typename C, typename Fn>
void for_each_bucket(const C* q_codes, const C* k_codes, const u8* q_mask, const u8* k_mask, i64 n_q, i64 n_k,
                     i64 n_buckets, Scratch& s, Fn fn) {
    bucket_sort(q_codes, q_mask, n_q, n_buckets, s.q_start, s.fill, s.q_order);
    bucket_sort(k_codes, k_mask, n_k, n_buckets, s.k_start, s.fill, s.k_order);
    for (i64 c = 0; c < n_buckets; ++c) {
        const i64 nq = s.q_start[c + 1] - s.q_start[c], nk = s.k_start[c + 1] - s.k_start[c];
        if (nq > 0 && nk > 0) fn(c, s.q_order.data() + s.q_start[c], nq, s.k_order.data() + s.k_start[c], nk);
    }
}

// Bucket-major: per hash, queries and keys sorted by code; each bucket pairwise or as outer products.
template <typename C>
void lsh_weighted_backward(const C* q_codes, const C* k_codes, i64 n_b, i64 m, i64 n_q, i64 n_k, const float* q,
                           const float* k, const float* q_inv, const float* k_inv, const float* v,
                           const float* dout, i64 heads, i64 d, i64 dv, const u8* q_mask, const u8* k_mask,
                           i64 n_buckets, float* dq, float* dk, int threads) {
    auto scratch = per_thread(threads, [&] { return Scratch(n_q, n_k, heads, d, dv, n_buckets); });
#pragma omp parallel num_threads(threads)
    {
        Scratch& s = scratch[omp_get_thread_num()];
#pragma omp for schedule(static)
        for (i64 b = 0; b < n_b; ++b) {
            const HeadRows r = gather_rows(q, k, v, dout, q_inv, k_inv, dq, dk, n_q, n_k, heads, d, dv, b, s);
            for (i64 h = 0; h < m; ++h) {
                for_each_bucket(q_codes + (b * m + h) * n_q, k_codes + (b * m + h) * n_k, q_mask + b * n_q,
                                k_mask + b * n_k, n_q, n_k, n_buckets, s,
                                [&](i64, const i64* qi, i64 nq, const i64* kj, i64 nk) {
                                    if (crowded(nq, nk, d, dv)) {
                                        bucket_outer_products(qi, nq, kj, nk, r, s.a_mat.data(), s.b_mat.data());
                                        return;
                                    }
                                    for (i64 ii = 0; ii < nq; ++ii)
                                        for (i64 jj = 0; jj < nk; ++jj) pair_update(r, qi[ii], kj[jj], r.dq + qi[ii] * d);
                                });
            }
            scatter_head(r.dq, dq, n_q, heads, d, b);
            scatter_head(r.dk, dk, n_k, heads, d, b);
        }
    }
}

// Query-major, for tables with few keys per bucket: each query walks its bucket's key list (first[h, c], then
// next[h, j]; -1 ends) under every hash; crowded buckets are unlinked and done as outer products afterwards.
template <typename C>
void lsh_weighted_backward_sparse(const C* q_codes, const C* k_codes, i64 n_b, i64 m, i64 n_q, i64 n_k,
                                  const float* q, const float* k, const float* q_inv, const float* k_inv,
                                  const float* v, const float* dout, i64 heads, i64 d, i64 dv, const u8* q_mask,
                                  const u8* k_mask, i64 n_buckets, float* dq, float* dk, int threads) {
    const i64 min_crowd = 2 * d * dv / (dv + 2 * d);  // no bucket of at most this many keys is crowded
    struct SparseScratch {
        Scratch rows;
        buffer<int32_t> first, count, next, q_count;
        buffer<u8> has_crowded;
    };
    auto scratch = per_thread(threads, [&] {
        return SparseScratch{Scratch(n_q, n_k, heads, d, dv, n_buckets), buffer<int32_t>(m * n_buckets),
                             buffer<int32_t>(m * n_buckets), buffer<int32_t>(m * n_k),
                             buffer<int32_t>(n_buckets), buffer<u8>(m)};
    });
#pragma omp parallel num_threads(threads)
    {
        auto& [s, first, count, next, q_count, has_crowded] = scratch[omp_get_thread_num()];
#pragma omp for schedule(static)
        for (i64 b = 0; b < n_b; ++b) {
            const HeadRows r = gather_rows(q, k, v, dout, q_inv, k_inv, dq, dk, n_q, n_k, heads, d, dv, b, s);
            const C* qcb = q_codes + b * m * n_q;
            const C* kcb = k_codes + b * m * n_k;
            const u8* qm = q_mask + b * n_q;
            const u8* km = k_mask + b * n_k;
            std::fill(first.begin(), first.end(), -1);
            std::fill(count.begin(), count.end(), 0);
            for (i64 h = 0; h < m; ++h) {
                for (i64 j = 0; j < n_k; ++j) {
                    if (!km[j]) continue;
                    const i64 c = h * n_buckets + i64(kcb[h * n_k + j]);
                    next[h * n_k + j] = first[c];
                    first[c] = int32_t(j);
                    ++count[c];
                }
            }
            std::fill(has_crowded.begin(), has_crowded.end(), 0);
            for (i64 h = 0; h < m; ++h) {
                if (*std::max_element(count.begin() + h * n_buckets, count.begin() + (h + 1) * n_buckets) <= min_crowd)
                    continue;
                std::fill(q_count.begin(), q_count.end(), 0);
                for (i64 i = 0; i < n_q; ++i)
                    if (qm[i]) ++q_count[i64(qcb[h * n_q + i])];
                for (i64 c = 0; c < n_buckets; ++c) {
                    if (crowded(q_count[c], count[h * n_buckets + c], d, dv)) {
                        first[h * n_buckets + c] = -1;
                        count[h * n_buckets + c] = -1;
                        has_crowded[h] = 1;
                    }
                }
            }
            float* acc = s.acc.data();
            for (i64 i = 0; i < n_q; ++i) {
                if (!qm[i]) continue;
                std::fill(acc, acc + d, 0.0f);
                for (i64 h = 0; h < m; ++h)
                    for (i64 j = first[h * n_buckets + i64(qcb[h * n_q + i])]; j >= 0; j = next[h * n_k + j])
                        pair_update(r, i, j, acc);
                float* dqi = r.dq + i * d;
                for (i64 l = 0; l < d; ++l) dqi[l] += acc[l];
            }
            for (i64 h = 0; h < m; ++h) {
                if (!has_crowded[h]) continue;
                const int32_t* marks = count.data() + h * n_buckets;  // -1: a crowded bucket, unlinked above
                for_each_bucket(qcb + h * n_q, kcb + h * n_k, qm, km, n_q, n_k, n_buckets, s,
                                [&](i64 c, const i64* qi, i64 nq, const i64* kj, i64 nk) {
                                    if (marks[c] == -1) bucket_outer_products(qi, nq, kj, nk, r, s.a_mat.data(),
                                                                              s.b_mat.data());
                                });
            }
            scatter_head(r.dq, dq, n_q, heads, d, b);
            scatter_head(r.dk, dk, n_k, heads, d, b);
        }
    }
}

// ---------------------------------------------------------------- YOSO-E and the unit rows

// base[j] = 1 - acos(cos_row[j]) / pi, branch-free (A&S 4.4.46)
void prob_base_row(const float* cos_row, i64 n, float* base) {
    for (i64 j = 0; j < n; ++j) {
        const float x = cos_row[j];
        const float ax = std::min(std::fabs(x), 1.0f);
        float p = ACOS[7];
        for (int c = 6; c >= 0; --c) p = p * ax + ACOS[c];
        const float r = std::sqrt(1.0f - ax) * p * float(1.0 / PI);  // acos(|x|) / pi
        base[j] = x >= 0.0f ? 1.0f - r : r;
    }
}

void pow_row(const float* base, i64 n, i64 e, float* out) {
    for (i64 j = 0; j < n; ++j) out[j] = 1.0f;
    for (i64 t = 0; t < e; ++t)
        for (i64 j = 0; j < n; ++j) out[j] *= base[j];
}

}  // namespace

// ---------------------------------------------------------------- exported entry points (C ABI for ctypes)

#define YOSO_FOR_CODES(X) X(u8, uint8_t) X(i16, int16_t) X(i32, int32_t)

#define YOSO_CODE_KERNELS(suffix, C)                                                                             \
    YOSO_EXPORT void fast_hash_codes_##suffix(const float* x, i64 batch, i64 n, i64 heads, i64 d,                \
                                              const float* signs, i64 parts, i64 d_pad, i64 num_hash, i64 tau,   \
                                              C* codes, int threads) {                                           \
        fast_hash_codes<C>(x, batch, n, heads, d, signs, parts, d_pad, num_hash, tau, codes, threads);           \
    }                                                                                                            \
    YOSO_EXPORT void gaussian_hash_codes_##suffix(const float* x, i64 batch, i64 n, i64 heads, i64 d,            \
                                                  const float* draws, i64 num_hash, i64 tau, C* codes,           \
                                                  int threads) {                                                 \
        gaussian_hash_codes<C>(x, batch, n, heads, d, draws, num_hash, tau, codes, threads);                     \
    }                                                                                                            \
    YOSO_EXPORT void lsh_cumulation_##suffix(const C* q_codes, const C* k_codes, i64 n_b, i64 m, i64 n_q,        \
                                             i64 n_k, const float* v, i64 heads, i64 dv, const u8* q_mask,       \
                                             const u8* k_mask, i64 n_buckets, float* out, int threads) {         \
        lsh_cumulation<C>(q_codes, k_codes, n_b, m, n_q, n_k, v, heads, dv, q_mask, k_mask, n_buckets, out,      \
                          threads);                                                                              \
    }                                                                                                            \
    YOSO_EXPORT void lsh_weighted_backward_##suffix(                                                             \
        const C* q_codes, const C* k_codes, i64 n_b, i64 m, i64 n_q, i64 n_k, const float* q, const float* k,    \
        const float* q_inv, const float* k_inv, const float* v, const float* dout, i64 heads, i64 d, i64 dv,     \
        const u8* q_mask, const u8* k_mask, i64 n_buckets, float* dq, float* dk, int threads) {                  \
        lsh_weighted_backward<C>(q_codes, k_codes, n_b, m, n_q, n_k, q, k, q_inv, k_inv, v, dout, heads, d, dv,  \
                                 q_mask, k_mask, n_buckets, dq, dk, threads);                                    \
    }                                                                                                            \
    YOSO_EXPORT void lsh_weighted_backward_sparse_##suffix(                                                      \
        const C* q_codes, const C* k_codes, i64 n_b, i64 m, i64 n_q, i64 n_k, const float* q, const float* k,    \
        const float* q_inv, const float* k_inv, const float* v, const float* dout, i64 heads, i64 d, i64 dv,     \
        const u8* q_mask, const u8* k_mask, i64 n_buckets, float* dq, float* dk, int threads) {                  \
        lsh_weighted_backward_sparse<C>(q_codes, k_codes, n_b, m, n_q, n_k, q, k, q_inv, k_inv, v, dout, heads,  \
                                        d, dv, q_mask, k_mask, n_buckets, dq, dk, threads);                      \
    }

YOSO_FOR_CODES(YOSO_CODE_KERNELS)

// In place: cos (B, L, S) -> k_mask * (1 - acos(clamp(cos)) / pi) ** tau; k_mask float (B, S).
YOSO_EXPORT void collision_prob(float* cos, const float* k_mask, i64 n_b, i64 n_l, i64 n_s, i64 tau, int threads) {
    auto scratch = per_thread(threads, [&] { return buffer<float>(n_s); });
#pragma omp parallel num_threads(threads)
    {
        buffer<float>& base = scratch[omp_get_thread_num()];
#pragma omp for schedule(static)
        for (i64 t = 0; t < n_b * n_l; ++t) {
            float* row = cos + t * n_s;
            const float* km = k_mask + (t / n_l) * n_s;
            prob_base_row(row, n_s, base.data());
            pow_row(base.data(), n_s, tau, row);
            for (i64 j = 0; j < n_s; ++j) row[j] *= km[j];
        }
    }
}

// In place, for the YOSO-E backward: cos -> P, dov (= dO V^T) -> W, exact or the reference's surrogate.
YOSO_EXPORT void collision_prob_and_weight(float* cos, float* dov, const float* k_mask, i64 n_b, i64 n_l, i64 n_s,
                                           i64 tau, int exact, float eps, int threads) {
    const float half_tau = float(tau) / 2.0f;
    auto scratch = per_thread(threads, [&] { return buffer<float>(2 * n_s); });
#pragma omp parallel num_threads(threads)
    {
        float* base = scratch[omp_get_thread_num()].data();
        float* low = base + n_s;
#pragma omp for schedule(static)
        for (i64 t = 0; t < n_b * n_l; ++t) {
            float* row = cos + t * n_s;
            float* w = dov + t * n_s;
            const float* km = k_mask + (t / n_l) * n_s;
            prob_base_row(row, n_s, base);
            pow_row(base, n_s, tau - 1, low);
            if (exact) {
                for (i64 j = 0; j < n_s; ++j) {
                    const float c = std::min(std::max(row[j], -1.0f + eps), 1.0f - eps);
                    w[j] *= float(tau) * low[j] / (float(PI) * std::sqrt(1.0f - c * c)) * km[j];
                }
            } else {
                for (i64 j = 0; j < n_s; ++j) w[j] *= half_tau * low[j] * base[j] * km[j];
            }
            for (i64 j = 0; j < n_s; ++j) row[j] = low[j] * base[j] * km[j];
        }
    }
}

// out[b, i] = (grad - xn (xn . grad)) / norm for rows with norm > eps, grad * short_scale otherwise; xn = x / norm
// for raw rows x, else x itself. out may be grad.
YOSO_EXPORT void unit_rows_backward(const float* x, int raw, const float* norm, const float* grad, i64 rows, i64 d,
                                    float eps, float short_scale, float* out, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 t = 0; t < rows; ++t) {
        const float* xr = x + t * d;
        const float* g = grad + t * d;
        float* o = out + t * d;
        float radial = 0.0f, inv = short_scale;
        if (norm[t] > eps) {
            for (i64 l = 0; l < d; ++l) radial += xr[l] * g[l];
            inv = 1.0f / norm[t];
            if (raw) radial *= inv * inv;
        }
        for (i64 l = 0; l < d; ++l) o[l] = (g[l] - xr[l] * radial) * inv;
    }
}

// Whether this CPU runs the instructions of an x86-64 feature level ("x86-64-v3", "x86-64-v4"): kernels_cpp.py asks
// the baseline build before loading a more demanding one.
YOSO_EXPORT int yoso_cpu_supports(const char* level) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    __builtin_cpu_init();
    if (std::strcmp(level, "x86-64-v3") == 0) return __builtin_cpu_supports("x86-64-v3");
    if (std::strcmp(level, "x86-64-v4") == 0) return __builtin_cpu_supports("x86-64-v4");
#else
    (void)level;
#endif
    return 0;
}
