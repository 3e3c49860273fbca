#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// Loop bodies for the fused kernels that the compiler vectorizes without -ffast-math: sums in
// kLanes interleaved partial sums (a fixed order, so the same bits on every thread count), and
// an exp built from arithmetic and bit operations instead of a libm call. Each has a plain twin
// (tests/model/test_block_ops.cpp compares them).

// Inlined into every caller, so that a caller compiled for AVX2 (below) gets AVX2 code.
#define RQ_VEC_INLINE inline __attribute__((always_inline))

namespace rq::model {

constexpr int64_t kLanes = 8;

// sum_i f(i) for i in [0, n), in kLanes partial sums added pairwise at the end.
template <class T, class F>
RQ_VEC_INLINE T lane_sum(int64_t n, F f) {
    T       acc[kLanes] = {};
    int64_t i           = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int64_t k = 0; k < kLanes; ++k) acc[k] += f(i + k);
    for (; i < n; ++i) acc[i % kLanes] += f(i);
    for (int64_t w = kLanes / 2; w > 0; w /= 2)
        for (int64_t k = 0; k < w; ++k) acc[k] += acc[k + w];
    return acc[0];
}

// max of x[0..n), n >= 1, in kLanes partial maxima.
template <class T>
RQ_VEC_INLINE T lane_max(const T* x, int64_t n) {
    T acc[kLanes];
    for (int64_t k = 0; k < kLanes; ++k) acc[k] = x[0];
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int64_t k = 0; k < kLanes; ++k) acc[k] = x[i + k] > acc[k] ? x[i + k] : acc[k];
    for (; i < n; ++i) acc[0] = std::max(acc[0], x[i]);
    for (int64_t k = 1; k < kLanes; ++k) acc[0] = std::max(acc[0], acc[k]);
    return acc[0];
}

// e^x in fp32 without a libm call: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite, two-part ln2),
// e^r by its degree-7 Taylor polynomial, 2^n added into the exponent bits. Within 3 ulp of
// std::exp on [-87, 88]; x is clamped to that range (e^-87 ~ 1.6e-38 stands for anything
// smaller, where a softmax or sigmoid reads 0 either way).
RQ_VEC_INLINE float exp_vec(float x) {
    x             = x > -87.0f ? x : -87.0f;  // maxss/minss forms (std::max is not)
    x             = x < 88.0f ? x : 88.0f;
    const float t = x * 1.44269504088896341f + 12582912.0f;  // round(x / ln2) in the low bits
    const float n = t - 12582912.0f;
    float       r = x - n * 0.693145751953125f;  // ln2, high part (exact in n * hi)
    r             = r - n * 1.428606765330187e-06f;
    float p       = 1.0f / 5040;
    p             = p * r + 1.0f / 720;
    p             = p * r + 1.0f / 120;
    p             = p * r + 1.0f / 24;
    p             = p * r + 1.0f / 6;
    p             = p * r + 0.5f;
    p             = p * r + 1.0f;
    p             = p * r + 1.0f;
    uint32_t ti, pi;
    std::memcpy(&ti, &t, sizeof ti);
    std::memcpy(&pi, &p, sizeof pi);
    pi += (ti - 0x4B400000u) << 23;  // t's bits are 0x4B400000 + n: n into the exponent
    std::memcpy(&p, &pi, sizeof p);
    return p;
}
inline double exp_vec(double x) {
    return std::exp(x);  // fp64 (gradient checks): libm
}

// p = softmax(scale * s) over keys [0, pos], 0 beyond; s [L] raw scores, in place. One row of
// the causal attention softmax (attention.cpp, attention_f32.cpp).
template <class T>
RQ_VEC_INLINE void causal_softmax_row(T* s, int64_t pos, int64_t L, double scale) {
    const int64_t n = pos + 1;
    const T       m = lane_max(s, n), sc = T(scale);
    for (int64_t j = 0; j < n; ++j) s[j] = exp_vec((s[j] - m) * sc);
    const T inv = T(1) / lane_sum<T>(n, [&](int64_t j) { return s[j]; });
    for (int64_t j = 0; j < n; ++j) s[j] *= inv;
    std::fill(s + n, s + L, T(0));
}

// ds = scale * p * (dp - sum_j p_j dp_j) over keys [0, pos], in place of dp [L]; 0 beyond. The
// backward of causal_softmax_row.
template <class T>
RQ_VEC_INLINE void causal_softmax_backward_row(T* dp, const T* p, int64_t pos, int64_t L,
                                               double scale) {
    const int64_t n = pos + 1;
    const T       d = lane_sum<T>(n, [&](int64_t j) { return p[j] * dp[j]; }), sc = T(scale);
    for (int64_t j = 0; j < n; ++j) dp[j] = sc * p[j] * (dp[j] - d);
    std::fill(dp + n, dp + L, T(0));
}

// Hot fp32 loops are compiled twice, for AVX2 and for the baseline ISA, and run as AVX2 where
// the CPU has it. Neither enables FMA and every reduction is in kLanes fixed lanes, so both
// do the same operations in the same order: the same bits (tests compare them). force_baseline
// makes them run the baseline version (tests).
bool use_avx2();
void force_baseline(bool on);

}  // namespace rq::model
