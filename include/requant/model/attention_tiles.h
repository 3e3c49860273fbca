#pragma once
#include <cstdint>

#include "requant/model/vec_math.h"

// Register tiles of the fused fp32 attention (attention_f32.cpp), forward and backward: a
// product of a few rows with a transposed operand (score_rows) and a weighted sum of rows
// (out_rows). Vectors are GCC's vector extension (8 floats): two SSE operations in the
// baseline build, one AVX operation in the AVX2 build, the same IEEE operations per lane, no
// FMA. Every output element is summed in one fixed order whichever loop computes it, so the
// results do not depend on the build, the tiling or the threads.

namespace rq::model::tiles {

typedef float     v8f __attribute__((vector_size(32)));
typedef float     v8f_u __attribute__((vector_size(32), aligned(4)));  // at any float address
constexpr int64_t kV = 8;
// 8 floats at any address, as a v8f and back. Macros, not functions: a function taking or
// returning a 32-byte vector has another ABI in the baseline build (GCC's -Wpsabi).
#define RQ_LOAD8(p) (*reinterpret_cast<const v8f_u*>(p))
#define RQ_STORE8(p, x) (*reinterpret_cast<v8f_u*>(p) = (x))

// s[r][j] = q_r . k_j for RT query rows and keys [0, m); kt [D, ld] holds k transposed.
// Every element is summed over d in order from 0, whichever loop computes it.
template <int RT>
RQ_VEC_INLINE void score_rows(const float* const* qr, const float* kt, int64_t ld, int64_t D,
                              int64_t m, float* const* s) {
    int64_t j = 0;
    for (; j + 2 * kV <= m; j += 2 * kV) {
        v8f acc[RT][2] = {};
        for (int64_t d = 0; d < D; ++d) {
            const v8f k0 = RQ_LOAD8(kt + d * ld + j), k1 = RQ_LOAD8(kt + d * ld + j + kV);
#pragma GCC unroll 4
            for (int r = 0; r < RT; ++r) {
                acc[r][0] += qr[r][d] * k0;
                acc[r][1] += qr[r][d] * k1;
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < RT; ++r) {
            RQ_STORE8(s[r] + j, acc[r][0]);
            RQ_STORE8(s[r] + j + kV, acc[r][1]);
        }
    }
    for (; j < m; ++j)
        for (int r = 0; r < RT; ++r) {
            float a = 0;
            for (int64_t d = 0; d < D; ++d) a += qr[r][d] * kt[d * ld + j];
            s[r][j] = a;
        }
}

// o_r = sum_{j <= pos_r} p_r[j * ps] v_j over columns [c0, c0 + 8W) for RT rows, pos
// non-decreasing (Add: o_r += that sum). Each element sums j in order from 0. ps: the stride
// of the weights (1: rows of p; a row length: columns of p).
template <int RT, int W, bool Add>
RQ_VEC_INLINE void out_tile(const float* const* p, int64_t ps, const int64_t* pos,
                            const float* const* vr, int64_t c0, float* const* o) {
    v8f     acc[RT][W] = {};
    int64_t j          = 0;
    for (; j <= pos[0]; ++j) {  // keys every row sees
        v8f x[W];
#pragma GCC unroll 4
        for (int w = 0; w < W; ++w) x[w] = RQ_LOAD8(vr[j] + c0 + w * kV);
#pragma GCC unroll 4
        for (int u = 0; u < RT; ++u)
#pragma GCC unroll 4
            for (int w = 0; w < W; ++w) acc[u][w] += p[u][j * ps] * x[w];
    }
    for (int r = 1; r < RT; ++r)
        for (; j <= pos[r]; ++j) {  // keys only rows r .. RT-1 see
            v8f x[W];
#pragma GCC unroll 4
            for (int w = 0; w < W; ++w) x[w] = RQ_LOAD8(vr[j] + c0 + w * kV);
            for (int u = r; u < RT; ++u)
#pragma GCC unroll 4
                for (int w = 0; w < W; ++w) acc[u][w] += p[u][j * ps] * x[w];
        }
#pragma GCC unroll 4
    for (int u = 0; u < RT; ++u)
#pragma GCC unroll 4
        for (int w = 0; w < W; ++w) {
            float* dst = o[u] + c0 + w * kV;
            RQ_STORE8(dst, Add ? RQ_LOAD8(dst) + acc[u][w] : acc[u][w]);
        }
}

// All D columns of out_tile's rows: 32 at a time, then 8 at a time; one by one (the same order
// per element) when D is not a multiple of 8.
template <int RT, bool Add = false>
RQ_VEC_INLINE void out_rows(const float* const* p, int64_t ps, const int64_t* pos,
                            const float* const* vr, int64_t D, float* const* o) {
    if (D % kV != 0) {
        for (int r = 0; r < RT; ++r)
            for (int64_t c = 0; c < D; ++c) {
                float a = 0;
                for (int64_t j = 0; j <= pos[r]; ++j) a += p[r][j * ps] * vr[j][c];
                o[r][c] = Add ? o[r][c] + a : a;
            }
        return;
    }
    int64_t c0 = 0;
    for (; c0 + 4 * kV <= D; c0 += 4 * kV) out_tile<RT, 4, Add>(p, ps, pos, vr, c0, o);
    for (; c0 < D; c0 += kV) out_tile<RT, 1, Add>(p, ps, pos, vr, c0, o);
}

}  // namespace rq::model::tiles
