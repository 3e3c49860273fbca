// QTIP's bitshift trellis: codes, Viterbi, tail-biting, packing (requant/quant/trellis.h).
// Compiled with -ffp-contract=off (CMakeLists.txt): viterbi and viterbi_ref must round alike.
#include "requant/quant/trellis.h"

#include <ATen/ATen.h>
#include <c10/util/Half.h>

#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "requant/error.h"

// The functions that take or return 32-byte vectors are in an anonymous namespace (and always
// inlined): no vector crosses this file's ABI, so GCC's note on the baseline clone's vector
// ABI does not apply. It is reported at the end of the file, hence here, for the whole file.
#pragma GCC diagnostic ignored "-Wpsabi"

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

// Eight lanes in GCC's vector extension: AVX2 registers in the avx2 clone, pairs of SSE
// registers in the baseline one; elementwise IEEE operations either way.
typedef float   f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

inline __attribute__((always_inline)) f32x8 load8(const float* p) {
    f32x8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline __attribute__((always_inline)) void store8(float* p, f32x8 v) {
    std::memcpy(p, &v, sizeof v);
}

// The best predecessor of each group g (states g C + c share it): best[g] = min over c of
// cost[c G + g], the first c on ties, recorded in from[g]. A block of 32 groups stays in
// registers while c runs, so each of the C strips is read once.
template <uint32_t C>
inline __attribute__((always_inline)) void best_predecessors(const float* __restrict cost,
                                                             float* __restrict best,
                                                             uint8_t* __restrict from, uint32_t G) {
    constexpr int kVecs = 4;  // G = 2^L / C >= 256 is a multiple of 8 kVecs
    for (uint32_t g0 = 0; g0 < G; g0 += 8 * kVecs) {
        f32x8 b[kVecs];
        i32x8 a[kVecs];
        for (int k = 0; k < kVecs; ++k) b[k] = load8(cost + g0 + 8 * k), a[k] = i32x8{};
        for (uint32_t c = 1; c < C; ++c) {
            const float* cc = cost + std::size_t(c) * G + g0;
            const i32x8  cv = i32x8{} + int32_t(c);
            for (int k = 0; k < kVecs; ++k) {
                const f32x8 v  = load8(cc + 8 * k);
                const i32x8 lt = v < b[k];  // strictly smaller: ties keep the first
                b[k]           = lt ? v : b[k];
                a[k]           = lt ? cv : a[k];
            }
        }
        for (int k = 0; k < kVecs; ++k) {
            store8(best + g0 + 8 * k, b[k]);
            for (int j = 0; j < 8; ++j) from[g0 + 8 * k + j] = uint8_t(a[k][j]);
        }
    }
}

constexpr uint32_t kStates = uint32_t{1} << kTrellisL;

// The new costs of the 8 states from s = g C + c: err + best[g], err = sum over v of
// (value(s, v) - x_v)^2, in viterbi_ref's order.
template <int V, uint32_t C>
inline __attribute__((always_inline)) f32x8 new_costs(const float* v0, const float* v1, f32x8 x0,
                                                      f32x8 x1, const float* best, uint32_t s) {
    f32x8 b;
    if constexpr (C >= 8) {
        b = f32x8{} + best[s / C];
    } else {  // lane l holds state s + l of group (s + l) / C: best has 8 floats of padding
        constexpr i32x8 lane_group = {0 / C, 1 / C, 2 / C, 3 / C, 4 / C, 5 / C, 6 / C, 7 / C};
        b                          = __builtin_shuffle(load8(best + s / C), lane_group);
    }
    const f32x8 d0 = load8(v0 + s) - x0;
    if constexpr (V == 1) {
        return d0 * d0 + b;
    } else {
        const f32x8 d1 = load8(v1 + s) - x1;
        return (d0 * d0 + d1 * d1) + b;
    }
}

// Step t's cost of every state, into cost (the last step: backtrack starts from it).
template <int V, uint32_t C>
inline __attribute__((always_inline)) void add_errors(float* __restrict cost, const float* v0,
                                                      const float* v1, const float* best, float x0,
                                                      float x1) {
    const f32x8 x0v = f32x8{} + x0, x1v = f32x8{} + x1;
    for (uint32_t s = 0; s < kStates; s += 8)
        store8(cost + s, new_costs<V, C>(v0, v1, x0v, x1v, best, s));
}

// Step t < S - 1 without a cost array: each state's new cost goes straight into the running
// minimum of its successors' group at step t + 1. The states hi G + j (j < G) are group j's
// predecessors with top KV bits hi; hi ascends, so strictly-smaller keeps the first on ties,
// as best_predecessors does. best: step t's [G]; next, from: step t + 1's.
template <int V, uint32_t C>
inline __attribute__((always_inline)) void relax(const float* v0, const float* v1, float x0,
                                                 float x1, const float* __restrict best,
                                                 float* __restrict next, int32_t* __restrict arg,
                                                 uint8_t* __restrict from) {
    constexpr uint32_t G   = kStates / C;
    const f32x8        x0v = f32x8{} + x0, x1v = f32x8{} + x1;
    for (uint32_t j = 0; j < G; j += 8) {
        store8(next + j, new_costs<V, C>(v0, v1, x0v, x1v, best, j));
        std::memset(arg + j, 0, 8 * sizeof(int32_t));
    }
    for (uint32_t hi = 1; hi < C; ++hi) {
        const i32x8 hv = i32x8{} + int32_t(hi);
        for (uint32_t j = 0; j < G; j += 8) {
            const f32x8 nc = new_costs<V, C>(v0, v1, x0v, x1v, best, hi * G + j);
            const f32x8 o  = load8(next + j);
            const i32x8 lt = nc < o;
            i32x8       a;
            std::memcpy(&a, arg + j, sizeof a);
            a = lt ? hv : a;
            store8(next + j, lt ? nc : o);
            std::memcpy(arg + j, &a, sizeof a);
        }
    }
    for (uint32_t j = 0; j < G; ++j) from[j] = uint8_t(arg[j]);
}

// Steps 1 .. S - 1 of one pass, from step 0's cost to step S - 1's (in cost), the chosen
// predecessors in from [S, G].
template <int V, uint32_t C>
inline __attribute__((always_inline)) void steps(float* cost, const float* v0, const float* v1,
                                                 const float* x, int S, float* best, float* next,
                                                 int32_t* arg, uint8_t* from) {
    constexpr uint32_t G  = kStates / C;
    auto               xv = [&](int t, int v) { return V == 2 ? x[t * V + v] : v ? 0.0f : x[t]; };
    if (S < 2) return;
    best_predecessors<C>(cost, best, from + G, G);
    for (int t = 1; t + 1 < S; ++t) {
        relax<V, C>(v0, v1, xv(t, 0), xv(t, 1), best, next, arg, from + std::size_t(t + 1) * G);
        std::swap(best, next);
    }
    add_errors<V, C>(cost, v0, v1, best, xv(S - 1, 0), xv(S - 1, 1));
}

// The Viterbi recursion (the hot loop), specialised per (V, C = 2^KV). Elementwise IEEE
// operations only, in viterbi_ref's order, so every vector width gives the same bits; built
// for AVX2 and for the baseline, chosen at load time.
__attribute__((target_clones("avx2", "default"))) void viterbi_steps(float* cost, const float* v0,
                                                                     const float* v1, int V, int kv,
                                                                     const float* x, int S,
                                                                     float* best, float* next,
                                                                     int32_t* arg, uint8_t* from) {
    switch (V * 16 + kv) {
        case 16 + 1:
            return steps<1, 2>(cost, v0, v1, x, S, best, next, arg, from);
        case 16 + 2:
            return steps<1, 4>(cost, v0, v1, x, S, best, next, arg, from);
        case 16 + 3:
            return steps<1, 8>(cost, v0, v1, x, S, best, next, arg, from);
        case 16 + 4:
            return steps<1, 16>(cost, v0, v1, x, S, best, next, arg, from);
        case 32 + 2:
            return steps<2, 4>(cost, v0, v1, x, S, best, next, arg, from);
        case 32 + 4:
            return steps<2, 16>(cost, v0, v1, x, S, best, next, arg, from);
        case 32 + 6:
            return steps<2, 64>(cost, v0, v1, x, S, best, next, arg, from);
        case 32 + 8:
            return steps<2, 256>(cost, v0, v1, x, S, best, next, arg, from);
        default:
            throw ConfigError("trellis: no Viterbi step for V " + std::to_string(V) + ", KV " +
                              std::to_string(kv));
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
    const uint32_t G = kStates >> kv;
    // Scratch kept per thread: a tile is a few milliseconds, a fresh 1 MiB would be a fifth.
    thread_local std::vector<float>   cost, err, best, next;
    thread_local std::vector<int32_t> arg;
    thread_local std::vector<uint8_t> from;  // the chosen predecessor's top KV bits
    cost.resize(kStates), err.resize(kStates), arg.resize(G);
    best.resize(G + 8), next.resize(G + 8);  // new_costs reads up to 7 past the end
    from.resize(std::size_t(S) * G);
    const float* v0 = values_.data();
    const float* v1 = values_.data() + kStates;
    state_errors(err.data(), v0, v1, V_, x[0], V_ == 2 ? x[1] : 0.0f, kStates);
    for (uint32_t s = 0; s < kStates; ++s)
        cost[s] = overlap >= 0 && (s >> kv) != uint32_t(overlap) ? kInf : err[s];
    viterbi_steps(cost.data(), v0, v1, V_, kv, x, S, best.data(), next.data(), arg.data(),
                  from.data());
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
