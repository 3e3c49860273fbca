// QTIP's bitshift trellis: codes, Viterbi, tail-biting, packing (requant/quant/trellis.h).
// Compiled with -ffp-contract=off (CMakeLists.txt): viterbi and viterbi_ref must round alike.
#include "requant/quant/trellis.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "requant/error.h"

namespace rq::quant {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

float one_mad(uint32_t s) {
    const uint32_t x = 34038481u * s + 76625530u;  // mod 2^32
    const uint32_t y = (x & 255u) + ((x >> 8) & 255u) + ((x >> 16) & 255u) + (x >> 24);
    return float(int(y) - 510) / 147.800537109375f;
}

float three_inst(uint32_t s) {
    const uint32_t  x = 89226354u * s + 64248484u;  // mod 2^32
    const uint32_t  r = (x & 0x8FFF8FFFu) ^ 0x3B603B60u;
    const c10::Half hi(uint16_t(r >> 16), c10::Half::from_bits());
    const c10::Half lo(uint16_t(r & 0xFFFFu), c10::Half::from_bits());
    return float(c10::Half(hi + lo));  // the sum rounded to fp16, as the reference adds halves
}

}  // namespace

namespace {

// Lloyd's k-means of 2-D points into n_c centres; `nearest(p, c, arg)` assigns each point to
// its nearest centre (the first on ties). Sums in point order: the same bits for any
// `nearest` that picks the same centres.
template <class Nearest>
at::Tensor hyb_kmeans(uint64_t seed, int64_t n_points, int iters, Nearest&& nearest) {
    const int64_t        n_c = int64_t{1} << kHybLutBits;
    auto                 gen = at::detail::createCPUGenerator(seed);
    const at::Tensor     pts = at::randn({n_points, 2}, gen, at::kDouble).contiguous();
    at::Tensor           cen = at::randn({n_c, 2}, gen, at::kDouble).contiguous();
    const double*        p   = pts.data_ptr<double>();
    std::vector<int64_t> assign(std::size_t(n_points), 0);
    for (int it = 0; it < iters; ++it) {
        const double* c = cen.data_ptr<double>();
        at::parallel_for(0, n_points, 4096, [&](int64_t b, int64_t e) {  // points apart: any split
            nearest(p + 2 * b, e - b, c, n_c, assign.data() + b);
        });
        std::vector<double> sum(std::size_t(2 * n_c), 0.0), cnt(std::size_t(n_c), 0.0);
        for (int64_t i = 0; i < n_points; ++i) {
            const auto k = std::size_t(assign[std::size_t(i)]);
            sum[2 * k] += p[2 * i], sum[2 * k + 1] += p[2 * i + 1], cnt[k] += 1;
        }
        double* cw = cen.data_ptr<double>();
        for (std::size_t k = 0; k < std::size_t(n_c); ++k)
            if (cnt[k] > 0)
                cw[2 * k] = sum[2 * k] / cnt[k], cw[2 * k + 1] = sum[2 * k + 1] / cnt[k];
    }
    const double sd = cen.std(/*unbiased=*/false).item<double>();
    return (cen * (0.9682458365518543 / sd)).to(at::kFloat);
}

inline double dist2(const double* p, const double* c) {
    const double d0 = p[0] - c[0], d1 = p[1] - c[1];
    return d0 * d0 + d1 * d1;
}

// Every centre for every point.
void nearest_all(const double* p, int64_t n, const double* c, int64_t n_c, int64_t* arg) {
    for (int64_t i = 0; i < n; ++i) {
        double  best = std::numeric_limits<double>::infinity();
        int64_t a    = 0;
        for (int64_t k = 0; k < n_c; ++k) {
            const double d = dist2(p + 2 * i, c + 2 * k);
            if (d < best) best = d, a = k;
        }
        arg[i] = a;
    }
}

// Centres sorted by their first coordinate; from the point's place outwards on both sides,
// stopping a side once its first-coordinate gap alone exceeds the best distance. Ties go to the
// smaller index, as in nearest_all.
void nearest_sorted(const double* p, int64_t n, const double* c, int64_t n_c, int64_t* arg) {
    std::vector<int64_t> order(static_cast<std::size_t>(n_c), 0);
    for (int64_t k = 0; k < n_c; ++k) order[std::size_t(k)] = k;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return c[2 * a] < c[2 * b] || (c[2 * a] == c[2 * b] && a < b);
    });
    std::vector<double> xs(static_cast<std::size_t>(n_c));
    for (int64_t k = 0; k < n_c; ++k) xs[std::size_t(k)] = c[2 * order[std::size_t(k)]];
    for (int64_t i = 0; i < n; ++i) {
        const double* pi    = p + 2 * i;
        const auto    mid   = std::lower_bound(xs.begin(), xs.end(), pi[0]) - xs.begin();
        double        best  = std::numeric_limits<double>::infinity();
        int64_t       a     = n_c;
        auto          try_k = [&](int64_t r) {
            const int64_t k = order[std::size_t(r)];
            const double  d = dist2(pi, c + 2 * k);
            if (d < best || (d == best && k < a)) best = d, a = k;
        };
        for (int64_t lo = mid - 1, hi = mid; lo >= 0 || hi < n_c;) {
            bool more = false;
            if (hi < n_c) {
                const double gap = xs[std::size_t(hi)] - pi[0];
                if (gap * gap <= best)
                    try_k(hi++), more = true;
                else
                    hi = n_c;
            }
            if (lo >= 0) {
                const double gap = pi[0] - xs[std::size_t(lo)];
                if (gap * gap <= best)
                    try_k(lo--), more = true;
                else
                    lo = -1;
            }
            if (!more) break;
        }
        arg[i] = a;
    }
}

}  // namespace

const char* name(TrellisCode c) {
    switch (c) {
        case TrellisCode::Hyb:
            return "hyb";
        case TrellisCode::OneMad:
            return "1mad";
        case TrellisCode::ThreeInst:
            return "3inst";
    }
    return "?";
}

at::Tensor hyb_table(uint64_t seed, int64_t n_points, int iters) {
    return hyb_kmeans(seed, n_points, iters, nearest_sorted);
}

at::Tensor hyb_table_ref(uint64_t seed, int64_t n_points, int iters) {
    return hyb_kmeans(seed, n_points, iters, nearest_all);
}

BitshiftTrellis::BitshiftTrellis(int K, TrellisCode code, const at::Tensor& hyb) : K_(K) {
    if (K < 1 || K > 4) throw ConfigError("trellis: K must be 1..4, got " + std::to_string(K));
    V_ = code == TrellisCode::Hyb ? 2 : 1;
    values_.assign(std::size_t(V_) * kStates, 0.0f);
    if (code == TrellisCode::Hyb) {
        const int64_t rows = int64_t{1} << kHybLutBits;
        if (!hyb.defined() || hyb.dim() != 2 || hyb.size(0) != rows || hyb.size(1) != 2)
            throw ConfigError("trellis: HYB needs its table, float [" + std::to_string(rows) +
                              ", 2]");
        const at::Tensor t = hyb.to(at::kFloat).contiguous();
        const float*     l = t.data_ptr<float>();
        for (uint32_t s = 0; s < kStates; ++s) {
            const uint32_t h     = s * (s + 1);  // < 2^32 for s < 2^16
            const uint32_t idx   = (h >> (16 - kHybLutBits - 1)) & ((1u << kHybLutBits) - 1);
            values_[s]           = ((h >> 15) & 1u) ? -l[2 * idx] : l[2 * idx];
            values_[kStates + s] = l[2 * idx + 1];
        }
    } else {
        for (uint32_t s = 0; s < kStates; ++s)
            values_[s] = code == TrellisCode::OneMad ? one_mad(s) : three_inst(s);
    }
}

namespace {

// One Viterbi step on all 2^L states (the hot loop): best predecessor per group g (min over
// the C arrays cost[c G + g], the first on ties), then for s = g C + c the new cost
// err(s) + best[g], err(s) = sum over v of (value(s, v) - x_v)^2 computed in place (the same
// operations, in the same order, as viterbi_ref). Elementwise IEEE operations only, so every
// vector width gives the same bits; built for AVX2 and for the baseline, chosen at load time.
__attribute__((target_clones("avx2", "default"))) void viterbi_step(
    float* __restrict cost, const float* __restrict v0, const float* __restrict v1, int V, float x0,
    float    x1, float* __restrict best, uint32_t* __restrict arg, uint8_t* __restrict from,
    uint32_t G, uint32_t C) {
    for (uint32_t g = 0; g < G; ++g) best[g] = cost[g], arg[g] = 0;
    for (uint32_t c = 1; c < C; ++c) {
        const float* __restrict cc = cost + std::size_t(c) * G;
        for (uint32_t g = 0; g < G; ++g) {
            const float    v = cc[g], o = best[g];
            const uint32_t lt = 0u - uint32_t(v < o);  // all ones where v is strictly smaller
            best[g]           = v < o ? v : o;
            arg[g]            = (arg[g] & ~lt) | (c & lt);
        }
    }
    for (uint32_t g = 0; g < G; ++g) from[g] = uint8_t(arg[g]);
    for (uint32_t g = 0; g < G; ++g) {
        const float       b        = best[g];
        const std::size_t s0       = std::size_t(g) * C;
        float* __restrict o        = cost + s0;
        const float* __restrict a0 = v0 + s0;
        if (V == 1) {
            for (uint32_t c = 0; c < C; ++c) {
                const float d = a0[c] - x0;
                o[c]          = d * d + b;
            }
        } else {
            const float* __restrict a1 = v1 + s0;
            for (uint32_t c = 0; c < C; ++c) {
                const float d0 = a0[c] - x0, d1 = a1[c] - x1;
                o[c] = (d0 * d0 + d1 * d1) + b;
            }
        }
    }
}

__attribute__((target_clones("avx2", "default"))) void state_errors(float* __restrict err,
                                                                    const float* __restrict v0,
                                                                    const float* __restrict v1,
                                                                    int V, float x0, float x1,
                                                                    uint32_t n) {
    if (V == 1) {
        for (uint32_t s = 0; s < n; ++s) {
            const float d = v0[s] - x0;
            err[s]        = d * d;
        }
        return;
    }
    for (uint32_t s = 0; s < n; ++s) {
        const float d0 = v0[s] - x0, d1 = v1[s] - x1;
        err[s] = d0 * d0 + d1 * d1;
    }
}

// The end of the path: the cheapest final state (the first on ties; under `overlap`, among
// those whose low L - KV bits are it), then back through the chosen predecessors.
void backtrack(const float* cost, const uint8_t* from, int S, int kv, int overlap,
               uint16_t* states) {
    const uint32_t n = uint32_t{1} << kTrellisL, G = n >> kv;
    uint32_t       s     = 0;
    float          b     = kInf;
    bool           found = false;
    for (uint32_t q = 0; q < n; ++q) {
        if (overlap >= 0 && (q & (G - 1)) != uint32_t(overlap)) continue;
        if (!found || cost[q] < b) b = cost[q], s = q, found = true;
    }
    states[S - 1] = uint16_t(s);
    for (int t = S - 1; t > 0; --t) {
        const uint32_t g = s >> kv;
        s                = (uint32_t(from[std::size_t(t) * G + g]) << (kTrellisL - kv)) | g;
        states[t - 1]    = uint16_t(s);
    }
}

}  // namespace

void BitshiftTrellis::viterbi(const float* x, int T, int overlap, uint16_t* states) const {
    const int      S = T / V_, kv = KV();
    const uint32_t G = kStates >> kv, C = 1u << kv;
    // Scratch kept per thread: a tile is a few milliseconds, a fresh 1 MiB would be a fifth.
    thread_local std::vector<float>    cost, err, best;
    thread_local std::vector<uint32_t> arg;
    thread_local std::vector<uint8_t>  from;  // the chosen predecessor's top KV bits
    cost.resize(kStates), err.resize(kStates), best.resize(G), arg.resize(G);
    from.resize(std::size_t(S) * G);
    const float* v0       = values_.data();
    const float* v1       = values_.data() + kStates;
    auto         step_err = [&](int t) {  // err[s] = sum over v of (value(s, v) - x[t V + v])^2
        state_errors(err.data(), v0, v1, V_, x[t * V_], V_ == 2 ? x[t * V_ + 1] : 0.0f, kStates);
    };
    step_err(0);
    for (uint32_t s = 0; s < kStates; ++s)
        cost[s] = overlap >= 0 && (s >> kv) != uint32_t(overlap) ? kInf : err[s];
    for (int t = 1; t < S; ++t)  // predecessors of s = g << KV | c: p = x << (L - KV) | g
        viterbi_step(cost.data(), v0, v1, V_, x[t * V_], V_ == 2 ? x[t * V_ + 1] : 0.0f,
                     best.data(), arg.data(), from.data() + std::size_t(t) * G, G, C);
    backtrack(cost.data(), from.data(), S, kv, overlap, states);
}

void BitshiftTrellis::viterbi_ref(const float* x, int T, int overlap, uint16_t* states) const {
    const int      S = T / V_, kv = KV();
    const uint32_t G = kStates >> kv, C = 1u << kv;
    auto           err = [&](uint32_t s, int t) {
        if (V_ == 1) {
            const float d = value(s, 0) - x[t];
            return d * d;
        }
        const float d0 = value(s, 0) - x[2 * t], d1 = value(s, 1) - x[2 * t + 1];
        return d0 * d0 + d1 * d1;
    };
    std::vector<float>   cost(kStates), next(kStates);
    std::vector<uint8_t> from(std::size_t(S) * G);
    for (uint32_t s = 0; s < kStates; ++s)
        cost[s] = overlap >= 0 && (s >> kv) != uint32_t(overlap) ? kInf : err(s, 0);
    for (int t = 1; t < S; ++t) {
        for (uint32_t s = 0; s < kStates; ++s) {
            const uint32_t g = s >> kv;
            float          b = cost[g];  // predecessor x = 0
            uint32_t       a = 0;
            for (uint32_t c = 1; c < C; ++c) {
                const float pc = cost[(c << (kTrellisL - kv)) | g];
                if (pc < b) b = pc, a = c;
            }
            from[std::size_t(t) * G + g] = uint8_t(a);
            next[s]                      = err(s, t) + b;
        }
        cost.swap(next);
    }
    backtrack(cost.data(), from.data(), S, kv, overlap, states);
}

std::vector<uint16_t> BitshiftTrellis::quantize_tile(const float* x, int T) const {
    if (T % (2 * V_) != 0)
        throw ConfigError("trellis: a tile of " + std::to_string(T) + " weights is not 2V steps");
    std::vector<float> x16(static_cast<std::size_t>(T)), rolled(static_cast<std::size_t>(T));
    for (int j = 0; j < T; ++j) x16[std::size_t(j)] = float(c10::Half(x[j]));
    const int shift = T / (2 * V_) * V_;  // half a tile, whole steps
    for (int j = 0; j < T; ++j) rolled[std::size_t((j + shift) % T)] = x16[std::size_t(j)];
    const int             S = T / V_;
    std::vector<uint16_t> st(static_cast<std::size_t>(S));
    viterbi(rolled.data(), T, -1, st.data());
    // Rolled step S/2 covers the tile's first weights: its top bits are the wrap-around.
    const int overlap = st[std::size_t(T / (2 * V_))] >> KV();
    viterbi(x16.data(), T, overlap, st.data());
    return st;
}

std::vector<uint16_t> BitshiftTrellis::pack(const uint16_t* states, int T) const {
    const int             S = T / V_, kv = KV(), bits = T * K_;
    std::vector<uint16_t> w(std::size_t((bits + 15) / 16), 0);
    int                   pos = 0;
    auto                  put = [&](uint32_t v, int n) {  // n bits of v, most significant first
        for (int i = n - 1; i >= 0 && pos < bits; --i, ++pos)
            if ((v >> i) & 1u) w[std::size_t(pos / 16)] |= uint16_t(1u << (15 - pos % 16));
    };
    put(states[0], kTrellisL);
    for (int t = 1; t < S; ++t) put(states[t] & ((1u << kv) - 1), kv);
    return w;
}

namespace {

// Bit `pos` of a packed tile of `bits` bits, read cyclically.
inline uint32_t bit_at(const uint16_t* w, int bits, int pos) {
    pos %= bits;
    return (w[pos / 16] >> (15 - pos % 16)) & 1u;
}

}  // namespace

std::vector<uint16_t> BitshiftTrellis::unpack(const uint16_t* words, int T) const {
    const int             S = T / V_, kv = KV(), bits = T * K_;
    std::vector<uint16_t> st(static_cast<std::size_t>(S));
    for (int t = 0; t < S; ++t) {  // state t: bits [t KV, t KV + L) of the cyclic stream
        uint32_t s = 0;
        for (int i = 0; i < kTrellisL; ++i) s = (s << 1) | bit_at(words, bits, t * kv + i);
        st[std::size_t(t)] = uint16_t(s);
    }
    return st;
}

float BitshiftTrellis::decode(const uint16_t* words, int T, int j) const {
    const int t = j / V_, bits = T * K_;
    uint32_t  s = 0;
    for (int i = 0; i < kTrellisL; ++i) s = (s << 1) | bit_at(words, bits, t * KV() + i);
    return value(s, j % V_);
}

}  // namespace rq::quant
