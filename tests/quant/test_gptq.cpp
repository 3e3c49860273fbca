// GPTQ (requant/quant/gptq.h): on real llama-7m-en layers with Hessians from calibration text it
// never does worse than RTN in the layer's output error; on synthetic Hessians it reduces to RTN
// without correlation and beats it with; its codes lie on the stored grid, act-order groups are
// carried by g_idx, dead inputs are harmless, and bad inputs throw. Not a test of perplexity.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../common/shared_dir.h"
#include "real_layers.h"
#include "requant/error.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/llama.h"
#include "requant/quant/gptq.h"
#include "requant/quant/rtn.h"

namespace rq::quant {
namespace {

using model::LinearInput;

constexpr double kSameQuality = 1e-6;  // relative slack when GPTQ must equal RTN

GptqParams params(int bits, int64_t G, bool act) {
    GptqParams p;
    p.bits       = bits;
    p.group_size = G;
    p.act_order  = act;
    return p;
}

class GptqLlama7m : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        const auto& r = test::real_layers();
        hessians_     = new std::map<std::pair<int64_t, LinearInput>, at::Tensor>();
        for (const auto& [key, x] : r.rows) {  // H = X^T X (sum over tokens, fp64)
            const at::Tensor xd = x.to(at::kDouble);
            (*hessians_)[key]   = xd.t().matmul(xd);
        }
        weights_ = new std::vector<model::LayerWeights>(r.layers);
    }
    static void TearDownTestSuite() {
        delete hessians_;
        delete weights_;
    }

    static std::map<std::pair<int64_t, LinearInput>, at::Tensor>* hessians_;
    static std::vector<model::LayerWeights>*                      weights_;
};
std::map<std::pair<int64_t, LinearInput>, at::Tensor>* GptqLlama7m::hessians_ = nullptr;
std::vector<model::LayerWeights>*                      GptqLlama7m::weights_  = nullptr;

TEST_F(GptqLlama7m, NeverWorseThanRtnOnRealLayers) {
    ASSERT_EQ(hessians_->size(), 8u) << "4 linear inputs x 2 layers observed";
    int64_t n_worse = 0, n_runs = 0;
    std::printf("# layer linear     bits    G  act   rtn_err     gptq_err    gptq/rtn\n");
    for (std::size_t li = 0; li < weights_->size(); ++li) {
        const int64_t layer = li == 0 ? 0 : 4;
        for (model::Linear l : model::kLinears) {
            const at::Tensor& w = (*weights_)[li].linear(l);
            const at::Tensor& H = hessians_->at({layer, model::linear_input(l)});
            ASSERT_EQ(H.size(0), w.size(1)) << model::linear_name(l);
            for (RtnParams c : {RtnParams{4, 128}, RtnParams{3, 128}, RtnParams{2, 64}}) {
                const double e_rtn = output_error(w, dequantize(rtn_quantize(w, c)), H);
                for (bool act : {false, true}) {
                    const GptqParams p = params(c.bits, c.group_size, act);
                    const double     e = output_error(w, dequantize(gptq_quantize(w, H, p)), H);
                    std::printf("  %5lld %-9s %5d %4lld %4d %11.4g %11.4g %10.4f\n",
                                (long long)layer, model::linear_name(l), c.bits,
                                (long long)c.group_size, int(act), e_rtn, e, e / e_rtn);
                    ++n_runs;
                    if (!(e <= e_rtn)) {
                        ++n_worse;
                        ADD_FAILURE() << "layer " << layer << " " << model::linear_name(l) << " "
                                      << c.bits << " bits G " << c.group_size << " act_order "
                                      << act << ": gptq " << e << " > rtn " << e_rtn;
                    }
                }
            }
        }
    }
    std::printf("# runs : %lld   #worse than rtn : %lld   %s\n", (long long)n_runs,
                (long long)n_worse, n_worse ? "FAIL" : "OK");
}

// Synthetic problems: w float [O, I], H fp64 [I, I].
constexpr int64_t kO = 32, kI = 128;

at::Tensor synth_weights(uint64_t seed) {
    auto gen = at::detail::createCPUGenerator(seed);
    return at::randn({kO, kI}, gen) * 0.05;
}

// Full-rank, strongly correlated H = X^T X with X = Z A, and uneven input magnitudes.
at::Tensor correlated_hessian(uint64_t seed) {
    auto       gen = at::detail::createCPUGenerator(seed);
    at::Tensor A   = at::randn({kI, kI}, gen, at::kDouble) / 11.0 + at::eye(kI, at::kDouble);
    at::Tensor X   = at::randn({1024, kI}, gen, at::kDouble).matmul(A) *
                   at::exp(0.5 * at::randn({1, kI}, gen, at::kDouble));
    return X.t().matmul(X);
}

TEST(Gptq, IdentityHessianGivesRtn) {
    const at::Tensor w = synth_weights(1), H = at::eye(kI, at::kDouble);
    for (int bits : {2, 3, 4, 8})
        for (int64_t G : {int64_t(0), int64_t(32), int64_t(128)}) {
            const QuantizedLinear g   = gptq_quantize(w, H, params(bits, G, false));
            const QuantizedLinear r   = rtn_quantize(w, {bits, G});
            const double          e_g = output_error(w, dequantize(g), H);
            const double          e_r = output_error(w, dequantize(r), H);
            EXPECT_LE(e_g, e_r * (1 + kSameQuality)) << bits << " bits G " << G;
            EXPECT_EQ(g.codes.ne(r.codes).sum().item<int64_t>(), 0)
                << "#codes unlike RTN, " << bits << " bits G " << G;
        }
}

TEST(Gptq, CorrelatedHessianBeatsRtn) {
    const at::Tensor w = synth_weights(2), H = correlated_hessian(3);
    for (int bits : {2, 3, 4})
        for (int64_t G : {int64_t(0), int64_t(32)})
            for (bool act : {false, true}) {
                const double e_r = output_error(w, dequantize(rtn_quantize(w, {bits, G})), H);
                const double e_g =
                    output_error(w, dequantize(gptq_quantize(w, H, params(bits, G, act))), H);
                std::printf("synthetic %d bits G %3lld act %d: gptq/rtn %.4f\n", bits, (long long)G,
                            int(act), e_g / e_r);
                EXPECT_LT(e_g, e_r) << bits << " bits G " << G << " act_order " << act;
            }
}

// Codes reproduced by re-quantizing the dequantized weights with the stored (scale, zero) of each
// column's group (g_idx when present).
void expect_on_stored_grid(const QuantizedLinear& q, const std::string& what) {
    const int64_t    I     = q.in_features();
    const at::Tensor g     = q.g_idx.defined()  ? q.g_idx.to(at::kLong)
                             : q.group_size > 0 ? at::arange(I, at::kLong).div(q.group_size, "floor")
                                                : at::zeros({I}, at::kLong);
    const at::Tensor s     = q.scales.to(at::kFloat).index_select(1, g);
    const at::Tensor z     = q.zeros.to(at::kFloat).index_select(1, g);
    const at::Tensor level = dequantize(q) / s + z;
    EXPECT_EQ(level.ne(level.round()).sum().item<int64_t>(), 0) << what << ": #off-grid";
    EXPECT_EQ(level.round().clamp(0, 255).to(at::kByte).ne(q.codes).sum().item<int64_t>(), 0)
        << what;
    EXPECT_LE(q.codes.max().item<int64_t>(), (1 << q.bits) - 1) << what;
}

TEST(Gptq, CodesLieOnStoredGridAndActOrderUsesGIdx) {
    const at::Tensor w = synth_weights(4), H = correlated_hessian(5);
    for (int64_t G : {int64_t(0), int64_t(32), int64_t(48)}) {
        const QuantizedLinear plain = gptq_quantize(w, H, params(3, G, false));
        EXPECT_FALSE(plain.g_idx.defined());
        expect_on_stored_grid(plain, "G " + std::to_string(G));
        QuantizedLinear q = gptq_quantize(w, H, params(3, G, true));
        expect_on_stored_grid(q, "act_order G " + std::to_string(G));
        if (G == 0) continue;
        ASSERT_TRUE(q.g_idx.defined()) << "act_order with groups needs g_idx";
        ASSERT_EQ(q.g_idx.numel(), kI);
        const int64_t NG = n_groups(kI, G);
        EXPECT_GE(q.g_idx.min().item<int>(), 0);
        EXPECT_LT(q.g_idx.max().item<int>(), NG);
        const at::Tensor count = at::bincount(q.g_idx.to(at::kLong), {}, NG);
        for (int64_t k = 0; k < NG; ++k)  // groups are consecutive runs of the permuted order
            EXPECT_EQ(count[k].item<int64_t>(), std::min(G, kI - k * G)) << "group " << k;
        const at::Tensor dg = H.diagonal(), gi = q.g_idx.to(at::kLong);  // larger diag, earlier
        const at::Tensor before = dg.unsqueeze(1) > dg.unsqueeze(0);
        const at::Tensor later  = gi.unsqueeze(1) > gi.unsqueeze(0);
        EXPECT_EQ((before & later).sum().item<int64_t>(), 0)
            << "g_idx does not follow decreasing diag H";
        const at::Tensor with = dequantize(q);
        q.g_idx               = at::Tensor();
        EXPECT_FALSE(at::equal(with, dequantize(q))) << "dequantize ignores g_idx";
    }
}

TEST(Gptq, LazyBlocksDoNotChangeTheResult) {
    const at::Tensor      w = synth_weights(6), H = correlated_hessian(7);
    GptqParams            p    = params(4, 0, false);
    const QuantizedLinear full = gptq_quantize(w, H, p);
    for (int64_t b : {int64_t(1), int64_t(37), int64_t(64), int64_t(1000)}) {
        p.block_size = b;
        EXPECT_EQ(gptq_quantize(w, H, p).codes.ne(full.codes).sum().item<int64_t>(), 0)
            << "block " << b;
    }
}

TEST(Gptq, GroupsStartingMidBlockAreFittedOnTheBlockStartWeights) {
    // As the reference's find_params(W[:, i1 + i : i1 + i + G]): W's columns in the current
    // block do not yet hold the block's own error feedback. In the first block they are the
    // original weights, so group 1 (columns 64..127 of block 0..127) gets RTN's grid there;
    // with blocks of 64 it starts a block after an update and its grid moves.
    const at::Tensor      w = synth_weights(12), H = correlated_hessian(13);
    GptqParams            p   = params(3, 64, false);
    const QuantizedLinear q   = gptq_quantize(w, H, p);
    const QuantizedLinear rtn = rtn_quantize(w, {3, 64});
    EXPECT_TRUE(at::equal(q.scales.narrow(1, 1, 1), rtn.scales.narrow(1, 1, 1)));
    EXPECT_TRUE(at::equal(q.zeros.narrow(1, 1, 1), rtn.zeros.narrow(1, 1, 1)));
    p.block_size = 64;
    EXPECT_FALSE(
        at::equal(gptq_quantize(w, H, p).scales.narrow(1, 1, 1), rtn.scales.narrow(1, 1, 1)));
}

TEST(Gptq, StaticGroupsAreRtnGridsInTheOriginalOrder) {
    const at::Tensor w = synth_weights(14), H = correlated_hessian(15);
    for (bool act : {false, true}) {
        GptqParams p              = params(3, 32, act);
        p.static_groups           = true;
        const QuantizedLinear q   = gptq_quantize(w, H, p);
        const QuantizedLinear rtn = rtn_quantize(w, {3, 32});
        EXPECT_FALSE(q.g_idx.defined()) << "static groups stay contiguous, act_order " << act;
        EXPECT_TRUE(at::equal(q.scales, rtn.scales)) << act;
        EXPECT_TRUE(at::equal(q.zeros, rtn.zeros)) << act;
        expect_on_stored_grid(q, std::string("static, act_order ") + (act ? "1" : "0"));
        EXPECT_LT(output_error(w, dequantize(q), H), output_error(w, dequantize(rtn), H));
    }
}

TEST(Gptq, SparseWeightsKeepTheirValueAndPassNoError) {
    // GPTQ's rows are independent: a row entirely under the mask passes no error along itself,
    // so it keeps its original values exactly; every other row is quantized as without the mask.
    const at::Tensor w = synth_weights(16), H = correlated_hessian(17);
    for (bool act : {false, true}) {
        const GptqParams      p     = params(3, 32, act);
        const QuantizedLinear plain = gptq_quantize(w, H, p);
        at::Tensor            mask  = at::zeros(w.sizes(), at::kBool);
        mask.select(0, 3).fill_(true);
        mask.select(1, 40).fill_(true);  // and one whole column, with its feedback
        at::Tensor            kept;
        const QuantizedLinear q = gptq_quantize(w, H, p, mask, &kept);
        ASSERT_TRUE(kept.defined());
        EXPECT_TRUE(at::equal(kept.select(0, 3), w.select(0, 3).to(at::kFloat))) << act;
        // Column 40 is masked in every row: rows other than 3 still pass no error from it.
        at::Tensor m40 = at::zeros(w.sizes(), at::kBool);
        m40.select(1, 40).fill_(true);
        const QuantizedLinear col_only = gptq_quantize(w, H, p, m40);
        const at::Tensor      other    = at::arange(w.size(0)).ne(3);
        EXPECT_TRUE(at::equal(q.codes.index({other}), col_only.codes.index({other}))) << act;
        EXPECT_FALSE(at::equal(col_only.codes, plain.codes)) << "the masked column changes nothing";
        // The stored values beat the dense codes on the masked weights' own output error.
        const at::Tensor w_hat = at::where(mask, kept, dequantize(q));
        EXPECT_LT(output_error(w, w_hat, H), output_error(w, dequantize(plain), H)) << act;
    }
}

TEST(Gptq, DeadInputColumnIsHarmless) {
    const at::Tensor w = synth_weights(8);
    at::Tensor       H = correlated_hessian(9);
    for (int64_t k : {int64_t(5), int64_t(77)}) H.select(0, k).zero_(), H.select(1, k).zero_();
    for (bool act : {false, true}) {
        const QuantizedLinear q = gptq_quantize(w, H, params(4, 32, act));
        const at::Tensor      d = dequantize(q);
        ASSERT_TRUE(at::isfinite(d).all().item<bool>()) << "act_order " << act;
        EXPECT_TRUE(std::isfinite(output_error(w, d, H)));
        const at::Tensor g =
            q.g_idx.defined() ? q.g_idx.to(at::kLong) : at::arange(kI, at::kLong).div(32, "floor");
        const at::Tensor s = q.scales.to(at::kFloat).index_select(1, g);
        for (int64_t k : {int64_t(5), int64_t(77)}) {
            const at::Tensor excess = d.select(1, k).abs() - s.select(1, k);  // one grid step
            EXPECT_LE(excess.max().item<float>(), 0.0f)
                << "dead column " << k << ", act_order " << act << ": worst row "
                << excess.argmax().item<int64_t>() << " dequantized "
                << d[excess.argmax()][k].item<float>();
        }
    }
}

TEST(Gptq, BadInputsThrow) {
    const at::Tensor w = synth_weights(10), H = at::eye(kI, at::kDouble);
    EXPECT_THROW(gptq_quantize(w, at::eye(kI + 1, at::kDouble), GptqParams{}), ShapeError);
    EXPECT_THROW(gptq_quantize(w, at::ones({kI, kI + 1}, at::kDouble), GptqParams{}), ShapeError);
    EXPECT_THROW(gptq_quantize(w, at::ones({kI}, at::kDouble), GptqParams{}), ShapeError);
    EXPECT_THROW(gptq_quantize(w.t(), H, GptqParams{}), ShapeError);
    GptqParams p;
    p.damp = 0;
    EXPECT_THROW(gptq_quantize(w, -H, p), NumericError) << "H = -I is not positive definite";
    EXPECT_THROW(gptq_quantize(w, H, params(9, 128, false)), ConfigError);
    EXPECT_THROW(gptq_quantize(w, H, params(4, 1, false)), ConfigError);
    p      = GptqParams{};
    p.damp = -0.1;
    EXPECT_THROW(gptq_quantize(w, H, p), ConfigError);
    p            = GptqParams{};
    p.block_size = 0;
    EXPECT_THROW(gptq_quantize(w, H, p), ConfigError);
}

TEST(Gptq, NonMatrixWeightIsShapeError) {  // gptq.h: "ShapeError for mismatched shapes"
    const at::Tensor w = synth_weights(11), H = at::eye(kI, at::kDouble);
    EXPECT_THROW(gptq_quantize(w.flatten(), H, GptqParams{}), ShapeError);
    EXPECT_THROW(gptq_quantize(w.unsqueeze(0), H, GptqParams{}), ShapeError);
}

}  // namespace
}  // namespace rq::quant
