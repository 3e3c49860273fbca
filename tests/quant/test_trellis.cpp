// QTIP's bitshift trellis (requant/quant/trellis.h): the codes' values, the fast Viterbi against
// the plain one (bitwise the same states, free and constrained), valid and optimal-looking
// paths, tail-biting, packing to exactly T*K bits with a round trip and O(1) decoding, and the
// distortion on Gaussian data at 2, 3 and 4 bits.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "requant/error.h"
#include "requant/quant/trellis.h"

namespace rq::quant {
namespace {

constexpr int kT = 256;  // QTIP's tile: 16 x 16 weights

const at::Tensor& table() {
    static const at::Tensor t = hyb_table(1, int64_t{1} << 16, 12);  // small: a test
    return t;
}

std::vector<float> gaussian(uint64_t seed, int n) {
    auto             gen = at::detail::createCPUGenerator(seed);
    const at::Tensor t   = at::randn({n}, gen, at::kFloat);
    return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + n);
}

double path_cost(const BitshiftTrellis& tr, const std::vector<uint16_t>& st, const float* x) {
    double c = 0;
    for (std::size_t t = 0; t < st.size(); ++t)
        for (int v = 0; v < tr.V(); ++v) {
            const double d =
                double(tr.value(st[t], v)) - x[t * std::size_t(tr.V()) + std::size_t(v)];
            c += d * d;
        }
    return c;
}

bool valid_path(const BitshiftTrellis& tr, const std::vector<uint16_t>& st) {
    const uint32_t low = (1u << (kTrellisL - tr.KV())) - 1;
    for (std::size_t t = 1; t < st.size(); ++t)
        if (uint32_t(st[t]) >> tr.KV() != (st[t - 1] & low)) return false;
    return true;
}

// HYB's table: the pruned nearest-centre search picks the same centres as trying every one, so
// the tables are equal bitwise; and the table has its documented spread.
TEST(Trellis, HybTableMatchesItsReference) {
    const at::Tensor fast = hyb_table(3, 20000, 6), ref = hyb_table_ref(3, 20000, 6);
    EXPECT_TRUE(at::equal(fast, ref));
    EXPECT_NEAR(fast.std(/*unbiased=*/false).item<double>(), 0.9682458, 1e-6);
}

TEST(Trellis, CodesHaveTheirDocumentedScale) {
    const BitshiftTrellis mad(2, TrellisCode::OneMad), inst(2, TrellisCode::ThreeInst);
    double                m = 0, m2 = 0;
    for (uint32_t s = 0; s < (1u << kTrellisL); ++s) {
        m += mad.value(s, 0), m2 += double(mad.value(s, 0)) * mad.value(s, 0);
        ASSERT_TRUE(std::isfinite(inst.value(s, 0))) << s;
    }
    m /= 65536, m2 /= 65536;
    EXPECT_NEAR(m, 0.0, 0.02);
    EXPECT_NEAR(m2 - m * m, 1.0, 0.05);  // 1MAD is scaled to unit variance
    EXPECT_EQ(table().sizes(), (at::IntArrayRef{512, 2}));
    EXPECT_NEAR(table().to(at::kDouble).std(false).item<double>(), 0.9682458365518543, 1e-6);
    EXPECT_THROW(BitshiftTrellis(2, TrellisCode::Hyb), ConfigError);  // HYB needs its table
}

TEST(Trellis, FastViterbiGivesTheReferenceStatesBitwise) {
    struct Case {
        int         K;
        TrellisCode code;
    };
    // Every specialisation of the fast step, (V, KV): (1, 1), (1, 2), (1, 3), (1, 4), (2, 2),
    // (2, 4), (2, 6), (2, 8). The reference is slow at large KV: shorter tiles there.
    for (const Case c :
         {Case{1, TrellisCode::OneMad}, Case{2, TrellisCode::ThreeInst},
          Case{3, TrellisCode::OneMad}, Case{4, TrellisCode::ThreeInst}, Case{1, TrellisCode::Hyb},
          Case{2, TrellisCode::Hyb}, Case{3, TrellisCode::Hyb}, Case{4, TrellisCode::Hyb}}) {
        const BitshiftTrellis tr(c.K, c.code, table());
        const int             T = tr.KV() > 4 ? kT / 4 : kT, S = T / tr.V();
        for (uint64_t seed : {1, 2}) {
            const std::vector<float> x = gaussian(seed, T);
            for (int overlap : {-1, 37}) {
                std::vector<uint16_t> fast(static_cast<std::size_t>(S)), ref(fast);
                tr.viterbi(x.data(), T, overlap, fast.data());
                tr.viterbi_ref(x.data(), T, overlap, ref.data());
                EXPECT_EQ(fast, ref)
                    << "K " << c.K << " code " << int(c.code) << " overlap " << overlap;
                EXPECT_TRUE(valid_path(tr, fast));
                if (overlap >= 0) {
                    const uint32_t low = (1u << (kTrellisL - tr.KV())) - 1;
                    EXPECT_EQ(uint32_t(fast.front()) >> tr.KV(), uint32_t(overlap));
                    EXPECT_EQ(fast.back() & low, uint32_t(overlap));
                }
            }
        }
    }
}

TEST(Trellis, ViterbiBeatsEveryPerturbedPath) {
    // The optimum among valid paths: no single-code change of the found path is cheaper.
    const BitshiftTrellis    tr(2, TrellisCode::Hyb, table());
    const std::vector<float> x = gaussian(9, kT);
    std::vector<uint16_t>    st(static_cast<std::size_t>(kT / 2));
    tr.viterbi(x.data(), kT, -1, st.data());
    const double best = path_cost(tr, st, x.data());
    for (std::size_t t = 0; t < st.size(); t += 7)
        for (uint32_t c = 0; c < 16; ++c) {
            // Changing code c at step t changes states t .. t + L/KV - 1 (the bits shift through).
            std::vector<uint16_t> alt    = st;
            const int             shifts = kTrellisL / tr.KV();
            for (int k = 0; k < shifts && t + std::size_t(k) < st.size(); ++k) {
                const int      sh       = tr.KV() * k;
                const uint32_t mask     = 0xFu << sh;
                alt[t + std::size_t(k)] = uint16_t((alt[t + std::size_t(k)] & ~mask) | (c << sh));
            }
            if (!valid_path(tr, alt)) continue;
            EXPECT_GE(path_cost(tr, alt, x.data()), best - 1e-4) << "step " << t << " code " << c;
        }
}

TEST(Trellis, TailBitingTilesPackToExactlyTKBitsAndRoundTrip) {
    for (int K : {2, 3, 4}) {
        const BitshiftTrellis       tr(K, TrellisCode::Hyb, table());
        const std::vector<float>    x   = gaussian(uint64_t(K), kT);
        const std::vector<uint16_t> st  = tr.quantize_tile(x.data(), kT);
        const uint32_t              low = (1u << (kTrellisL - tr.KV())) - 1;
        EXPECT_TRUE(valid_path(tr, st));
        EXPECT_EQ(st.back() & low, uint32_t(st.front()) >> tr.KV()) << "tail-biting, K " << K;
        const std::vector<uint16_t> words = tr.pack(st.data(), kT);
        EXPECT_EQ(words.size() * 16, std::size_t(kT * K));
        EXPECT_EQ(tr.unpack(words.data(), kT), st);
        for (int j = 0; j < kT; ++j)
            ASSERT_EQ(tr.decode(words.data(), kT, j), tr.value(st[std::size_t(j / 2)], j % 2));
    }
}

TEST(Trellis, DistortionOnGaussianTilesFallsWithBits) {
    // Mean squared error per weight on unit Gaussian data; the Gaussian rate-distortion bound
    // is 2^(-2K): 0.0625, 0.0156, 0.0039. The trellis stays within 1.6x of it here.
    double prev = 1.0;
    for (int K : {2, 3, 4}) {
        const BitshiftTrellis tr(K, TrellisCode::Hyb, table());
        double                se = 0;
        const int             n  = 4;
        for (int i = 0; i < n; ++i) {
            const std::vector<float>    x  = gaussian(100 + uint64_t(i), kT);
            const std::vector<uint16_t> st = tr.quantize_tile(x.data(), kT);
            se += path_cost(tr, st, x.data());
        }
        const double mse = se / (n * kT);
        EXPECT_LT(mse, 1.6 * std::pow(2.0, -2 * K)) << "K " << K;
        EXPECT_LT(mse, prev);
        prev = mse;
    }
}

}  // namespace
}  // namespace rq::quant
