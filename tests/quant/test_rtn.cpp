// Round-to-nearest quantization (requant/quant/rtn.h) and the dense-part helpers of
// requant/quant/quantized.h: fast path bit-identical to the plain-loop reference, weights on a
// grid come back exactly, every weight within half a step of its dequantized value, and the
// storage count. Runs on random weights and on the real layer 0 of llama-7m-en.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "../common/shared_dir.h"
#include "requant/error.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/weights.h"
#include "requant/quant/rtn.h"

namespace rq::quant {
namespace {

const std::vector<int64_t> kGroups = {0, 32, 64, 128, 256};
const std::vector<int64_t> kWidths = {688, 172, 100};  // partial last groups
constexpr int64_t          kRows   = 12;
// Slack on the half-step bound for fp32 arithmetic: w/scale is rounded once (relative 2^-24),
// which can move a tie by |w| * 2^-24; dequantized values themselves are exact in fp32.
constexpr double kRoundSlack = 4.0 / (1 << 24);

// float [O, I]: rows with different magnitudes, a few outliers, and one all-zero row (the
// 1e-5 range clamp).
at::Tensor random_weights(int64_t O, int64_t I, uint64_t seed) {
    auto       gen = at::detail::createCPUGenerator(seed);
    at::Tensor row = at::exp(at::randn({O, 1}, gen)) * 0.02;
    at::Tensor w   = at::randn({O, I}, gen) * row;
    w.index_put_(
        {at::randint(0, O, {I / 16}, gen, at::kLong), at::randint(0, I, {I / 16}, gen, at::kLong)},
        at::randn({I / 16}, gen) * 0.5);
    w[O - 1].zero_();
    return w;
}

// scale and zero of every weight's group: fp32 [O, I] each.
std::pair<at::Tensor, at::Tensor> expanded_params(const QuantizedLinear& q) {
    const int64_t I = q.in_features();
    at::Tensor    g = q.group_size > 0 ? at::arange(I, at::kLong).div(q.group_size, "floor")
                                       : at::zeros({I}, at::kLong);
    return {q.scales.to(at::kFloat).index_select(1, g), q.zeros.to(at::kFloat).index_select(1, g)};
}

// Gemma-style: counts the weights whose error exceeds scale/2 (+ fp32 slack) and reports the
// worst (row, col) in steps, with its group's range, (max - min)/maxq and the stored scale.
int64_t check_half_step(const at::Tensor& w, const QuantizedLinear& q, const std::string& what) {
    const at::Tensor wd     = w.to(at::kDouble);
    const at::Tensor err    = (dequantize(q).to(at::kDouble) - wd).abs();
    const at::Tensor scale  = expanded_params(q).first.to(at::kDouble);
    const at::Tensor excess = (err - wd.abs() * kRoundSlack) / scale;  // in grid steps
    const int64_t    n_bad  = (excess > 0.5).sum().item<int64_t>();
    if (n_bad > 0) {
        const int64_t k = excess.flatten().argmax().item<int64_t>(), I = w.size(1);
        const int64_t r = k / I, c = k % I, G = q.group_size > 0 ? q.group_size : I;
        const int64_t c0 = c / G * G, n = std::min(G, I - c0);
        const double  mn = wd[r].narrow(0, c0, n).min().item<double>();
        const double  mx = wd[r].narrow(0, c0, n).max().item<double>();
        ADD_FAILURE() << what << ": #over " << n_bad << " of " << w.numel() << "; worst at (" << r
                      << ", " << c << "): w " << wd[r][c].item<double>() << ", dequantized "
                      << dequantize(q)[r][c].item<float>() << ", |err| " << err[r][c].item<double>()
                      << " > bound " << 0.5 * scale[r][c].item<double>() << " ("
                      << excess[r][c].item<double>() << " steps); group [" << c0 << ", " << c0 + n
                      << ") range [" << mn << ", " << mx << "], (max-min)/maxq "
                      << (mx - mn) / ((1 << q.bits) - 1) << ", stored scale "
                      << scale[r][c].item<double>();
    }
    return n_bad;
}

TEST(Rtn, FastEqualsReferenceBitwise) {
    int64_t n_wrong = 0;
    for (int bits = 2; bits <= 8; ++bits)
        for (int64_t G : kGroups)
            for (int64_t I : kWidths) {
                const std::string what = "bits " + std::to_string(bits) + " G " +
                                         std::to_string(G) + " I " + std::to_string(I);
                const at::Tensor      w    = random_weights(kRows, I, 31 * bits + G + I);
                const QuantizedLinear fast = rtn_quantize(w, {bits, G});
                const QuantizedLinear ref  = rtn_quantize_ref(w, {bits, G});
                ASSERT_EQ(fast.codes.sizes(), ref.codes.sizes()) << what;
                ASSERT_EQ(fast.scales.sizes(), ref.scales.sizes()) << what;
                const int64_t nw = fast.codes.ne(ref.codes).sum().item<int64_t>() +
                                   fast.scales.ne(ref.scales).sum().item<int64_t>() +
                                   fast.zeros.ne(ref.zeros).sum().item<int64_t>();
                EXPECT_EQ(nw, 0) << what << ": #wrong (codes + scales + zeros)";
                EXPECT_EQ(fast.scales.scalar_type(), at::kHalf);
                EXPECT_EQ(fast.bits, bits);
                EXPECT_EQ(fast.group_size, G);
                n_wrong += nw;
            }
    EXPECT_EQ(n_wrong, 0);
}

TEST(Rtn, WeightsOnTheGridComeBackExactly) {
    for (int bits = 2; bits <= 8; ++bits)
        for (int64_t G : {int64_t(0), int64_t(32), int64_t(128)})
            for (int64_t I : {int64_t(688), int64_t(100)}) {
                const int64_t maxq = (1 << bits) - 1, NG = n_groups(I, G), gs = G > 0 ? G : I;
                auto          gen = at::detail::createCPUGenerator(bits * 7 + G + I);
                // fp16-representable scales in [2^-10, 2^-4], integer zeros in [0, maxq].
                at::Tensor s =
                    at::exp2(at::rand({kRows, NG}, gen) * 6 - 10).to(at::kHalf).to(at::kFloat);
                at::Tensor z = at::randint(0, maxq + 1, {kRows, NG}, gen, at::kFloat);
                at::Tensor q = at::randint(0, maxq + 1, {kRows, I}, gen, at::kFloat);
                for (int64_t g = 0; g < NG; ++g) {  // every group spans the whole grid
                    q.select(1, g * gs).fill_(0);
                    q.select(1, g * gs + 1).fill_(double(maxq));
                }
                at::Tensor            gi = at::arange(I, at::kLong).div(gs, "floor");
                at::Tensor            w  = s.index_select(1, gi) * (q - z.index_select(1, gi));
                const QuantizedLinear r  = rtn_quantize(w, {bits, G});
                const at::Tensor      d  = dequantize(r);
                EXPECT_EQ(d.ne(w).sum().item<int64_t>(), 0)
                    << "bits " << bits << " G " << G << " I " << I;
                EXPECT_TRUE(at::equal(r.codes, q.to(at::kByte)));
                EXPECT_TRUE(at::equal(r.scales.to(at::kFloat), s));
                EXPECT_TRUE(at::equal(r.zeros.to(at::kFloat), z));
            }
}

TEST(Rtn, ErrorWithinHalfAStep) {
    int64_t n_bad = 0;
    for (int bits = 2; bits <= 8; ++bits)
        for (int64_t G : kGroups)
            for (int64_t I : kWidths) {
                const at::Tensor w = random_weights(kRows, I, 17 * bits + G + I);
                n_bad += check_half_step(w, rtn_quantize(w, {bits, G}),
                                         "bits " + std::to_string(bits) + " G " +
                                             std::to_string(G) + " I " + std::to_string(I));
            }
    EXPECT_EQ(n_bad, 0) << "weights farther than scale/2 from their dequantized value";
}

TEST(Rtn, ErrorWithinHalfAStepWhenGroupExcludesZero) {
    // Groups whose weights all have one sign (a bias-like row, or any group of size 2 half the
    // time): the grid must still cover them.
    auto             gen = at::detail::createCPUGenerator(99);
    const at::Tensor w   = 0.5 + 0.05 * at::randn({4, 256}, gen);
    for (int bits : {2, 4, 8})
        EXPECT_EQ(check_half_step(w, rtn_quantize(w, {bits, 64}),
                                  "positive, bits " + std::to_string(bits)),
                  0);
    const at::Tensor v = random_weights(kRows, 128, 5);
    EXPECT_EQ(check_half_step(v, rtn_quantize(v, {4, 2}), "G 2"), 0);
    const at::Tensor c = at::full({2, 64}, -0.0123f);  // constant: range below the 1e-5 clamp
    EXPECT_EQ(check_half_step(c, rtn_quantize(c, {4, 0}), "constant row"), 0);
}

TEST(Rtn, DequantizedValuesLieOnTheGrid) {
    for (int bits : {2, 3, 4, 8})
        for (int64_t G : {int64_t(0), int64_t(64)}) {
            const at::Tensor      w  = random_weights(kRows, 688, bits + G);
            const QuantizedLinear q  = rtn_quantize(w, {bits, G});
            const auto [scale, zero] = expanded_params(q);
            const at::Tensor level   = dequantize(q) / scale + zero;  // exact in fp32
            EXPECT_EQ(level.ne(level.round()).sum().item<int64_t>(), 0)
                << "off-grid, bits " << bits;
            EXPECT_TRUE(at::equal(level.to(at::kByte), q.codes)) << "bits " << bits << " G " << G;
            EXPECT_LE(q.codes.max().item<int64_t>(), (1 << bits) - 1);
            EXPECT_TRUE(at::equal(q.zeros.to(at::kFloat), q.zeros.to(at::kFloat).round()));
            EXPECT_GE(q.zeros.min().item<float>(), 0.0f);
            EXPECT_LE(q.zeros.max().item<float>(), float((1 << bits) - 1));
            EXPECT_GT(q.scales.min().item<float>(), 0.0f);
        }
}

TEST(Rtn, MoreBitsNeverIncreaseMaxError) {
    for (int64_t G : kGroups) {
        const at::Tensor w    = random_weights(kRows, 688, 300 + G);
        double           prev = INFINITY;
        for (int bits = 2; bits <= 8; ++bits) {
            const double e =
                (dequantize(rtn_quantize(w, {bits, G})) - w).abs().max().item<double>();
            EXPECT_LE(e, prev) << "G " << G << ": max error at " << bits << " bits above "
                               << bits - 1;
            prev = e;
        }
    }
}

TEST(Rtn, GroupCountsAndShapes) {
    EXPECT_EQ(n_groups(688, 128), 6);
    EXPECT_EQ(n_groups(100, 128), 1);
    EXPECT_EQ(n_groups(256, 128), 2);
    EXPECT_EQ(n_groups(257, 128), 3);
    EXPECT_EQ(n_groups(688, 0), 1);
    const at::Tensor      w  = random_weights(6, 172, 3);
    const QuantizedLinear pc = rtn_quantize(w, {4, 0});
    EXPECT_EQ(pc.scales.sizes(), (std::vector<int64_t>{6, 1}));
    EXPECT_EQ(pc.zeros.sizes(), (std::vector<int64_t>{6, 1}));
    const QuantizedLinear g = rtn_quantize(w, {4, 64});
    EXPECT_EQ(g.scales.sizes(), (std::vector<int64_t>{6, 3}));
    EXPECT_EQ(g.codes.sizes(), (std::vector<int64_t>{6, 172}));
    EXPECT_EQ(g.codes.scalar_type(), at::kByte);
    EXPECT_FALSE(g.g_idx.defined());
    EXPECT_FALSE(g.is_lut());
}

TEST(Rtn, DenseStorageBits) {
    QuantizedLinear q = rtn_quantize(random_weights(4, 688, 8), {3, 128});
    EXPECT_EQ(dense_storage_bits(q), 4 * 65 * 32 + 2 * 4 * 6 * 16);  // codes + fp16 scales, zeros
    q.g_idx = at::zeros({688}, at::kInt);
    EXPECT_EQ(dense_storage_bits(q), 4 * 65 * 32 + 2 * 4 * 6 * 16 + 688 * 32);
}

TEST(Rtn, BadParamsAreConfigErrors) {
    const at::Tensor w = random_weights(2, 64, 1);
    for (const RtnParams& p :
         {RtnParams{1, 128}, RtnParams{9, 128}, RtnParams{4, 1}, RtnParams{4, -1}}) {
        EXPECT_THROW(rtn_quantize(w, p), ConfigError) << p.bits << " bits, G " << p.group_size;
        EXPECT_THROW(rtn_quantize_ref(w, p), ConfigError) << p.bits << " bits, G " << p.group_size;
    }
    EXPECT_NO_THROW(rtn_quantize(w, {2, 2}));
}

TEST(Rtn, RealLayerLlama7m) {
    io::HfCheckpoint    ckpt(test::shared_path("models/llama-7m-en"));
    model::StageWeights sw = model::load_stage_weights(ckpt, {0, 1, true, false}, at::kFloat);
    ASSERT_EQ(sw.layers.size(), 1u);
    for (model::Linear l : model::kLinears) {
        const at::Tensor&     w = sw.layers[0].linear(l);
        const QuantizedLinear q = rtn_quantize(w, {4, 128});
        EXPECT_EQ(check_half_step(w, q, model::linear_name(l)), 0);
        // Frobenius bound implied by the elementwise one: sum over weights of (scale/2)^2.
        const double     wf    = w.to(at::kDouble).norm().item<double>();
        const double     rel   = (dequantize(q) - w).to(at::kDouble).norm().item<double>() / wf;
        const at::Tensor half  = expanded_params(q).first.to(at::kDouble) * 0.5;
        const double     bound = half.pow(2).sum().sqrt().item<double>() / wf;
        std::printf("rtn4_g128 layer 0 %-9s rel Frobenius error %.4f  (bound %.4f)\n",
                    model::linear_name(l), rel, bound);
        EXPECT_LE(rel, bound) << model::linear_name(l);
        EXPECT_GT(rel, 0.0) << model::linear_name(l) << ": bf16 weights are not on a 4-bit grid";
    }
}

}  // namespace
}  // namespace rq::quant
