// One decoder layer decomposed (requant/decompose/layer.h) and the sparse masks chosen before
// the dense fit (requant/decompose/outliers.h), on one process: the dense part is the base
// method's fit of the weights with the sparse ones zeroed, each CSR holds its own positions
// and the fp16 residuals there, W_hat is the one reconstruction, errors name the layer; the
// fixed rule is one IQR multiplier for the whole model within the budget, random outliers are
// seeded, Fisher significant weights are the top of the Fisher diagonal outside the outliers,
// and Alg. 1 with RTN stays within its budget and never raises the objective. Not tested here:
// the rank-independence of these selections (tests/mpi/test_outliers_mpi.cpp).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../common/shared_dir.h"
#include "../common/solo_transport.h"
#include "requant/decompose/layer.h"
#include "requant/decompose/outliers.h"
#include "requant/error.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/llama.h"
#include "requant/model/rope.h"
#include "requant/quant/decomposed.h"
#include "requant/quant/rtn.h"
#include "requant/quant/sparse.h"
#include "requant/sensitivity/stats.h"

namespace rq::decompose {
namespace {

// stories260k's linear shapes [O, I]: C 64, Hkv*D 32, F 172 (random layers use 64 for k/v).
const std::array<std::array<int64_t, 2>, model::kNumLinears> kShapes = {
    {{64, 64}, {64, 64}, {64, 64}, {64, 64}, {172, 64}, {172, 64}, {64, 172}}};
constexpr int64_t kOutliersPerLinear = 40;  // about 1% of the small linears
// An fp16 residual r is stored within |r| 2^-11 (2^-25 below the normal range), and W_hat =
// dequant + r is rounded once more in fp32 (|W_hat| 2^-24); 2^-23 leaves room for both ends.
constexpr double kHalfRel = 1.0 / 2048, kHalfAbs = 1.0 / (1 << 25), kFloatRel = 1.0 / (1 << 23);

io::JobQuant rtn3() {
    io::JobQuant p;
    p.method     = io::QuantMethod::Rtn;
    p.bits       = 3;
    p.group_size = 32;
    return p;
}

// float [O, I] per linear: trained-like scale, a few large entries the outliers go to.
model::LayerTensors random_layer(uint64_t seed) {
    auto                gen = at::detail::createCPUGenerator(seed);
    model::LayerTensors w;
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        const int64_t O = kShapes[i][0], I = kShapes[i][1], n = O * I / 64;
        w[i] = at::randn({O, I}, gen) * 0.02;
        w[i].view(-1).index_put_({at::randint(0, O * I, {n}, gen, at::kLong)},
                                 at::randn({n}, gen) * 0.3);
    }
    return w;
}

model::LayerTensors topk_masks(const model::LayerTensors& w, int64_t k) {
    model::LayerTensors m;
    for (std::size_t i = 0; i < model::kNumLinears; ++i) m[i] = quant::topk_mask(w[i].abs(), k);
    return m;
}

const char* lname(std::size_t i) {
    return model::linear_name(model::kLinears[i]);
}

// Weights where |W_hat - W| exceeds the fp16 storage of the residual, among `at`.
int64_t count_off_fp16(const at::Tensor& w, const at::Tensor& w_hat, const at::Tensor& dense,
                       const at::Tensor& at_mask) {
    const at::Tensor wd  = w.to(at::kDouble);
    const at::Tensor r   = (wd - dense.to(at::kDouble)).abs();
    const at::Tensor tol = r * kHalfRel + kHalfAbs + wd.abs() * kFloatRel;
    return ((w_hat.to(at::kDouble) - wd).abs().gt(tol) & at_mask).sum().item<int64_t>();
}

struct Stories {
    io::HfCheckpoint ckpt{test::shared_path("models/stories260k")};
    model::Stage     stage() const {
            return model::Stage(
                ckpt.config(),
                model::load_stage_weights(ckpt, model::whole_model(ckpt.config()), at::kFloat), 64);
    }
};

int64_t n_linear_weights(const model::Stage& s) {
    int64_t n = 0;
    for (const auto& lw : s.weights().layers)
        for (model::Linear l : model::kLinears) n += lw.linear(l).numel();
    return n;
}

// ---------------------------------------------------------------- quantize_weights

TEST(QuantizeWeights, RtnDenseIsTheFitOfTheWeightsWithMaskedEntriesZeroed) {
    const model::LayerTensors w = random_layer(1), masks = topk_masks(w, kOutliersPerLinear);
    model::LayerTensors       w_hat;
    const LayerQuant q = quantize_weights(w, 0, LayerStats{}, &masks, nullptr, rtn3(), w_hat);
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        const quant::QuantizedLinear ref =
            quant::rtn_quantize(w[i].masked_fill(masks[i], 0.0), {3, 32});
        EXPECT_EQ(q[i].dense.bits, 3) << lname(i);
        EXPECT_EQ(q[i].dense.group_size, 32) << lname(i);
        ASSERT_EQ(q[i].dense.codes.sizes(), ref.codes.sizes()) << lname(i);
        EXPECT_EQ(q[i].dense.codes.ne(ref.codes).sum().item<int64_t>(), 0) << lname(i) << " codes";
        EXPECT_TRUE(at::equal(q[i].dense.scales, ref.scales)) << lname(i) << " scales";
        EXPECT_TRUE(at::equal(q[i].dense.zeros, ref.zeros)) << lname(i) << " zeros";
        // Not the fit of the unmasked weights: the large entries would have widened the groups.
        EXPECT_FALSE(at::equal(q[i].dense.scales, quant::rtn_quantize(w[i], {3, 32}).scales))
            << lname(i);
    }
}

TEST(QuantizeWeights, OutlierCsrHoldsTheMaskedPositionsAndTheirFp16Residuals) {
    const model::LayerTensors w = random_layer(2), masks = topk_masks(w, kOutliersPerLinear);
    model::LayerTensors       w_hat;
    const LayerQuant q = quantize_weights(w, 0, LayerStats{}, &masks, nullptr, rtn3(), w_hat);
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        const quant::SparseCsr& o = q[i].outliers;
        ASSERT_EQ(o.nnz(), kOutliersPerLinear) << lname(i);
        EXPECT_EQ(o.rows, w[i].size(0));
        EXPECT_EQ(o.cols, w[i].size(1));
        EXPECT_EQ(o.values.scalar_type(), at::kHalf);
        EXPECT_TRUE(at::equal(quant::csr_mask(o), masks[i])) << lname(i) << ": positions";
        const at::Tensor residual = w[i] - quant::dequantize(q[i].dense);
        EXPECT_TRUE(at::equal(o.values, residual.masked_select(masks[i]).to(at::kHalf)))
            << lname(i) << ": values are not the fp16 residuals W - dequant(dense)";
        EXPECT_EQ(q[i].significant.nnz(), 0) << lname(i);
        EXPECT_FALSE(q[i].significant.indptr.defined()) << lname(i);
    }
}

TEST(QuantizeWeights, WHatIsTheReconstructionAndKeepsOutliersToFp16) {
    const model::LayerTensors w = random_layer(3), masks = topk_masks(w, kOutliersPerLinear);
    model::LayerTensors       w_hat;
    const LayerQuant q = quantize_weights(w, 0, LayerStats{}, &masks, nullptr, rtn3(), w_hat);
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        ASSERT_TRUE(w_hat[i].defined()) << lname(i);
        EXPECT_EQ(w_hat[i].scalar_type(), at::kFloat);
        EXPECT_TRUE(at::equal(w_hat[i], quant::reconstruct(q[i]))) << lname(i);
        const at::Tensor dense = quant::dequantize(q[i].dense);
        EXPECT_EQ(count_off_fp16(w[i], w_hat[i], dense, masks[i]), 0)
            << lname(i) << ": outliers not restored to fp16 precision";
        // Elsewhere W_hat is the dense part alone.
        EXPECT_TRUE(at::equal(w_hat[i].masked_select(~masks[i]), dense.masked_select(~masks[i])))
            << lname(i);
        // The largest |W - W_hat| is no longer at the outliers: they were the largest |w|.
        const double err_out = (w_hat[i] - w[i]).abs().masked_select(masks[i]).max().item<double>();
        const double err_rest =
            (w_hat[i] - w[i]).abs().masked_select(~masks[i]).max().item<double>();
        EXPECT_LT(err_out, err_rest) << lname(i);
    }
}

TEST(QuantizeWeights, WithoutMasksTheSparsePartsAreEmpty) {
    const model::LayerTensors w = random_layer(4);
    model::LayerTensors       w_hat;
    const LayerQuant q = quantize_weights(w, 0, LayerStats{}, nullptr, nullptr, rtn3(), w_hat);
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        EXPECT_EQ(q[i].outliers.nnz(), 0) << lname(i);
        EXPECT_EQ(q[i].significant.nnz(), 0) << lname(i);
        EXPECT_FALSE(q[i].outliers.indptr.defined()) << lname(i) << ": no part, no row pointers";
        EXPECT_FALSE(q[i].significant.indptr.defined()) << lname(i);
        const quant::QuantizedLinear ref = quant::rtn_quantize(w[i], {3, 32});
        EXPECT_TRUE(at::equal(q[i].dense.codes, ref.codes)) << lname(i);
        EXPECT_TRUE(at::equal(q[i].dense.scales, ref.scales)) << lname(i);
        EXPECT_TRUE(at::equal(w_hat[i], quant::dequantize(ref))) << lname(i);
    }
}

TEST(QuantizeWeights, UndefinedMaskLeavesThatLinearDense) {
    const model::LayerTensors w = random_layer(5);
    model::LayerTensors       masks;  // only gate_proj (4) has outliers
    masks[4] = quant::topk_mask(w[4].abs(), kOutliersPerLinear);
    model::LayerTensors w_hat;
    const LayerQuant    q = quantize_weights(w, 0, LayerStats{}, &masks, nullptr, rtn3(), w_hat);
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        EXPECT_EQ(q[i].outliers.nnz(), i == 4 ? kOutliersPerLinear : 0) << lname(i);
        EXPECT_EQ(q[i].outliers.indptr.defined(), i == 4) << lname(i);
        EXPECT_TRUE(at::equal(w_hat[i], quant::reconstruct(q[i]))) << lname(i);
    }
    EXPECT_TRUE(at::equal(q[0].dense.codes, quant::rtn_quantize(w[0], {3, 32}).codes));
}

TEST(QuantizeWeights, OutliersAndSignificantWeightsEachInTheirOwnCsr) {
    const model::LayerTensors w = random_layer(6), out = topk_masks(w, kOutliersPerLinear);
    model::LayerTensors       sig;
    auto                      gen = at::detail::createCPUGenerator(66);
    for (std::size_t i = 0; i < model::kNumLinears; ++i)  // 25 random positions off the outliers
        sig[i] = quant::topk_mask(at::rand(w[i].sizes(), gen).masked_fill(out[i], -1.0), 25);
    model::LayerTensors w_hat;
    const LayerQuant    q = quantize_weights(w, 2, LayerStats{}, &out, &sig, rtn3(), w_hat);
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        ASSERT_EQ((out[i] & sig[i]).sum().item<int64_t>(), 0) << "the test's masks overlap";
        const at::Tensor both = out[i] | sig[i];
        EXPECT_TRUE(at::equal(quant::csr_mask(q[i].outliers), out[i])) << lname(i);
        EXPECT_TRUE(at::equal(quant::csr_mask(q[i].significant), sig[i])) << lname(i);
        const at::Tensor dense    = quant::dequantize(q[i].dense);
        const at::Tensor residual = w[i] - dense;
        EXPECT_TRUE(at::equal(q[i].outliers.values, residual.masked_select(out[i]).to(at::kHalf)))
            << lname(i);
        EXPECT_TRUE(
            at::equal(q[i].significant.values, residual.masked_select(sig[i]).to(at::kHalf)))
            << lname(i);
        // The dense fit saw both kinds zeroed.
        EXPECT_TRUE(at::equal(q[i].dense.codes,
                              quant::rtn_quantize(w[i].masked_fill(both, 0.0), {3, 32}).codes))
            << lname(i);
        EXPECT_TRUE(at::equal(w_hat[i], quant::reconstruct(q[i]))) << lname(i);
        EXPECT_EQ(count_off_fp16(w[i], w_hat[i], dense, both), 0) << lname(i);
    }
}

// The errors of each linear against direct computation from the input rows X (the proxy
// |(W - W_hat) X|^2 / |W X|^2 from X^T X) and against the method's own objective.
TEST(QuantizeWeights, AwqScalesOProjOnlyWhereVAndOShareAShape) {
    // The reference applies the v -> o scale only when v_proj and o_proj have one shape: on a
    // GQA layer (v [32, 64], o [64, 64]) o_proj gets no input scale, the others do.
    auto                         gen     = at::detail::createCPUGenerator(21);
    const std::array<int64_t, 4> in_dims = {64, 64, 64, 172};
    LayerStats                   stats;
    for (std::size_t k = 0; k < 4; ++k) {
        const at::Tensor x       = at::randn({256, in_dims[k]}, gen);
        stats.inputs[k].samples  = x;
        stats.inputs[k].abs_mean = x.abs().mean(0);
    }
    io::JobQuant p        = rtn3();
    p.method              = io::QuantMethod::Awq;
    model::LayerTensors w = random_layer(21), w_hat;
    w[2]                  = at::randn({32, 64}, gen) * 0.02;  // v narrower than o: GQA
    LayerQuant q          = quantize_weights(w, 0, stats, nullptr, nullptr, p, w_hat);
    for (std::size_t i = 0; i < model::kNumLinears; ++i)
        EXPECT_EQ(q[i].dense.in_scale.defined(), i != 3) << lname(i);
    w[2] = at::randn({64, 64}, gen) * 0.02;  // v as wide as o: MHA
    q    = quantize_weights(w, 0, stats, nullptr, nullptr, p, w_hat);
    EXPECT_TRUE(q[3].dense.in_scale.defined()) << "o_proj of an MHA layer is scaled";
}

// AWQ's scales cost no bits because a deployed model folds them away, as the reference does:
// the RMSNorm weights divided by the q/k/v and gate/up input scales, and o's and down's input
// scales carried by the rows of v and up (out_scale). That model, every linear's codes taken
// as they are, computes the layer of the original-basis W_hat.
TEST(QuantizeWeights, AwqScalesFoldIntoTheNormsAndTheRowsBefore) {
    auto                         gen     = at::detail::createCPUGenerator(23);
    const std::array<int64_t, 4> in_dims = {64, 64, 64, 172};
    LayerStats                   stats;
    for (std::size_t k = 0; k < 4; ++k) {
        const at::Tensor x       = at::randn({256, in_dims[k]}, gen).exp();  // uneven channels
        stats.inputs[k].samples  = x;
        stats.inputs[k].abs_mean = x.abs().mean(0);
    }
    io::JobQuant p            = rtn3();
    p.method                  = io::QuantMethod::Awq;
    model::LayerTensors w     = random_layer(23), w_hat;  // MHA: v_proj and o_proj [64, 64]
    const LayerQuant    q     = quantize_weights(w, 0, stats, nullptr, nullptr, p, w_hat);
    const auto          dense = [&](model::Linear l) -> const quant::QuantizedLinear& {
        return q[std::size_t(l)].dense;
    };
    using model::Linear;
    ASSERT_TRUE(dense(Linear::O).in_scale.defined() && dense(Linear::Down).in_scale.defined());
    EXPECT_TRUE(at::equal(dense(Linear::V).out_scale, dense(Linear::O).in_scale));
    EXPECT_TRUE(at::equal(dense(Linear::Up).out_scale, dense(Linear::Down).in_scale));
    for (Linear l : {Linear::Q, Linear::K, Linear::O, Linear::Gate, Linear::Down})
        EXPECT_FALSE(dense(l).out_scale.defined()) << model::linear_name(l);

    io::LlamaConfig c;
    c.n_embd = 64, c.n_ff = 172, c.n_head = 8, c.n_head_kv = 8, c.head_dim = 8;
    c.rms_norm_eps               = 1e-5;
    const int64_t           T    = 16;
    const model::RopeTables rope = model::rope_tables(c, T, at::kFloat);
    model::LayerWeights     orig, folded;
    orig.attn_norm = at::rand({64}, gen) + 0.5;
    orig.ffn_norm  = at::rand({64}, gen) + 0.5;
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        orig.linear(model::kLinears[i]) = w_hat[i];
        quant::QuantizedLinear d        = q[i].dense;
        d.in_scale = d.out_scale          = at::Tensor();  // the codes as they are
        folded.linear(model::kLinears[i]) = quant::dequantize(d);
        EXPECT_EQ(quant::dense_storage_bits(d), quant::dense_storage_bits(q[i].dense));
    }
    folded.attn_norm      = orig.attn_norm / dense(Linear::Q).in_scale.to(at::kFloat);
    folded.ffn_norm       = orig.ffn_norm / dense(Linear::Gate).in_scale.to(at::kFloat);
    const at::Tensor x    = at::randn({2, T, 64}, gen);
    const at::Tensor y    = model::decoder_layer(x, orig, c, rope) - x;
    const at::Tensor y_f  = model::decoder_layer(x, folded, c, rope) - x;
    const double     diff = (y_f - y).abs().max().item<double>() / y.abs().max().item<double>();
    EXPECT_LT(diff, 1e-5);
    folded.ffn_norm      = orig.ffn_norm;  // a control: one norm left unfolded
    const at::Tensor y_u = model::decoder_layer(x, folded, c, rope) - x;
    EXPECT_GT((y_u - y).abs().max().item<double>() / y.abs().max().item<double>(), 1e-2);
}

TEST(QuantizeWeights, ErrorsMatchTheirDefinitionsOnTheInputRows) {
    const model::LayerTensors w     = random_layer(11);
    const model::LayerTensors masks = topk_masks(w, kOutliersPerLinear);
    auto                      gen   = at::detail::createCPUGenerator(5);
    // Rows of each input (model::LinearInput order: attn in, attn out, mlp in, mlp out).
    const std::array<int64_t, 4> in_dims = {64, 64, 64, 172};
    std::array<at::Tensor, 4>    x;
    LayerStats                   stats;
    for (std::size_t k = 0; k < 4; ++k) {
        x[k]                = at::randn({300, in_dims[k]}, gen, at::kDouble);
        stats.inputs[k].xtx = x[k].t().matmul(x[k]);
    }
    io::JobQuant p = rtn3();
    p.method       = io::QuantMethod::Gptq;
    model::LayerTensors w_hat;
    LayerErrors         e;
    const LayerQuant    q = quantize_weights(w, 0, stats, &masks, nullptr, p, w_hat, &e);
    const std::array<std::size_t, model::kNumLinears> input_of = {0, 0, 0, 1, 2, 2, 3};
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        const at::Tensor wd         = w[i].to(at::kDouble);
        const at::Tensor dense      = quant::dequantize(q[i].dense).to(at::kDouble);
        const at::Tensor full       = quant::reconstruct(q[i]).to(at::kDouble);
        const at::Tensor X          = x[input_of[i]];
        auto             out_energy = [&](const at::Tensor& a) {
            return X.matmul(a.t()).square().sum().item<double>();
        };
        const double wx = out_energy(wd);
        EXPECT_NEAR(e[i].proxy_dense, out_energy(wd - dense) / wx, 1e-4 * e[i].proxy_dense)
            << lname(i);
        EXPECT_NEAR(e[i].proxy, out_energy(wd - full) / wx, 1e-4 * e[i].proxy) << lname(i);
        EXPECT_LT(e[i].proxy, e[i].proxy_dense) << lname(i) << ": the outliers repair the fit";
        EXPECT_NEAR(e[i].objective, out_energy(wd - full), 1e-4 * e[i].objective) << lname(i);
        const double ww = wd.square().sum().item<double>();
        EXPECT_NEAR(e[i].weight, (wd - full).square().sum().item<double>() / ww,
                    1e-5 * e[i].weight);
        EXPECT_NEAR(e[i].weight_dense, (wd - dense).square().sum().item<double>() / ww,
                    1e-5 * e[i].weight_dense);
    }
    // RTN keeps no inputs: no proxy; its objective is sum dW^2.
    model::LayerTensors w_hat2;
    LayerErrors         r;
    const LayerQuant    q2 =
        quantize_weights(w, 0, LayerStats{}, nullptr, nullptr, rtn3(), w_hat2, &r);
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        EXPECT_TRUE(std::isnan(r[i].proxy) && std::isnan(r[i].proxy_dense)) << lname(i);
        const double d = (w[i].to(at::kDouble) - quant::reconstruct(q2[i]).to(at::kDouble))
                             .square()
                             .sum()
                             .item<double>();
        EXPECT_NEAR(r[i].objective, d, 1e-5 * d) << lname(i);
        EXPECT_EQ(r[i].objective, r[i].objective_dense) << lname(i) << ": no sparse part";
    }
}

TEST(QuantizeWeights, MethodErrorNamesTheLayerAndTheLinears) {
    const model::LayerTensors w = random_layer(7);
    model::LayerTensors       w_hat;
    io::JobQuant              p = rtn3();
    p.method                    = io::QuantMethod::Gptq;  // needs X^T X; LayerStats{} has none
    try {
        quantize_weights(w, 3, LayerStats{}, nullptr, nullptr, p, w_hat);
        ADD_FAILURE() << "GPTQ without X^T X did not throw";
    } catch (const InternalError& e) {
        const std::string what = e.what();
        std::printf("GPTQ without X^T X: %s\n", e.what());
        EXPECT_NE(what.find("layer 3"), std::string::npos) << what;
        EXPECT_NE(what.find("q_proj"), std::string::npos) << what;
        EXPECT_NE(what.find("X^T X"), std::string::npos) << what << ": the method's own message";
    }
}

TEST(QuantizeWeights, MissingFisherErrorNamesTheLayer) {
    // layer.h: "Errors name the layer and the linears."
    const model::LayerTensors w = random_layer(8);
    model::LayerTensors       w_hat;
    io::JobQuant              p = rtn3();
    p.method                    = io::QuantMethod::SqueezeLlm;
    try {
        quantize_weights(w, 3, LayerStats{}, nullptr, nullptr, p, w_hat);
        ADD_FAILURE() << "SqueezeLLM without the Fisher diagonal did not throw";
    } catch (const InternalError& e) {
        EXPECT_NE(std::string(e.what()).find("layer 3"), std::string::npos) << e.what();
    }
}

TEST(QuantizeLayer, StageLinearsBecomeWHat) {
    Stories             su;
    model::Stage        stage = su.stage();
    const auto          w0    = stage_linears(stage);
    const int64_t       layer = 2;
    model::LayerTensors masks = topk_masks(w0[std::size_t(layer)], 10);
    const LayerQuant    q     = quantize_layer(stage, layer, LayerStats{}, &masks, nullptr, rtn3());
    const auto          w1    = stage_linears(stage);
    for (std::size_t il = 0; il < w0.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            if (int64_t(il) != layer) {
                EXPECT_TRUE(at::equal(w1[il][i], w0[il][i])) << "layer " << il << " touched";
                continue;
            }
            EXPECT_TRUE(at::equal(w1[il][i], quant::reconstruct(q[i]))) << lname(i);
            EXPECT_EQ(q[i].outliers.nnz(), 10) << lname(i);
            EXPECT_FALSE(at::equal(w1[il][i], w0[il][i])) << lname(i);
        }
    // set_layer_weights puts the same W_hat; stage_linears are copies.
    set_stage_linears(stage, w0);
    EXPECT_TRUE(
        at::equal(stage.weights().layers[std::size_t(layer)].wq, w0[std::size_t(layer)][0]));
    set_layer_weights(stage, std::size_t(layer), q);
    for (std::size_t i = 0; i < model::kNumLinears; ++i)
        EXPECT_TRUE(at::equal(stage.weights().layers[std::size_t(layer)].linear(model::kLinears[i]),
                              w1[std::size_t(layer)][i]))
            << lname(i);
    auto copy = stage_linears(stage);
    copy[0][0].fill_(0.0f);
    EXPECT_FALSE(at::equal(stage.weights().layers[0].wq, copy[0][0])) << "not a copy";
}

// ---------------------------------------------------------------- select_sparse

// The interval [lo, hi] of multipliers rho for which the rule selects exactly c weights: count
// is non-increasing in rho, so both ends come from bisection down to adjacent doubles.
std::pair<double, double> rho_interval(const quant::IqrRule& r, int64_t c) {
    constexpr double kMax   = 1e6;
    auto             bisect = [](double a, double b, auto&& left) {  // left(a), !left(b)
        for (;;) {
                        const double m = a + 0.5 * (b - a);
                        if (m <= a || m >= b) return std::make_pair(a, b);
            (left(m) ? a : b) = m;
        }
    };
    const double lo =
        r.count(0) <= c ? 0 : bisect(0, kMax, [&](double x) { return r.count(x) > c; }).second;
    const double hi = r.count(kMax) >= c
                          ? kMax
                          : bisect(0, kMax, [&](double x) { return r.count(x) >= c; }).first;
    return {lo, hi};
}

io::JobRequant fixed_outliers(double ratio) {
    io::JobRequant r;
    r.outlier_ratio  = ratio;
    r.outlier_select = io::OutlierSelect::Fixed;
    return r;
}

TEST(SelectSparse, FixedRuleIsOneIqrMultiplierWithinTheBudget) {
    Stories               su;
    const model::Stage    stage = su.stage();
    test::SoloTransport   t;
    const double          ratio = 0.0045;
    const SparseSelection sel   = select_sparse(stage, t, fixed_outliers(ratio), nullptr);
    EXPECT_TRUE(sel.significant.empty());
    ASSERT_EQ(sel.outliers.size(), stage.weights().layers.size());
    const auto    w      = stage_linears(stage);
    const int64_t target = int64_t(std::floor(ratio * double(n_linear_weights(stage))));
    int64_t       total  = 0;
    double        lo = 0, hi = std::numeric_limits<double>::infinity();
    for (std::size_t il = 0; il < w.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const at::Tensor& m = sel.outliers[il][i];
            ASSERT_TRUE(m.defined());
            ASSERT_EQ(m.sizes(), w[il][i].sizes());
            const int64_t        c = m.sum().item<int64_t>();
            const quant::IqrRule rule(w[il][i]);
            const auto [a, b] = rho_interval(rule, c);
            lo                = std::max(lo, a);
            hi                = std::min(hi, b);
            total += c;
        }
    std::printf("fixed rule: %lld outliers, target %lld, rho in [%.9g, %.9g]\n", (long long)total,
                (long long)target, lo, hi);
    EXPECT_LE(total, target);
    EXPECT_GE(total, target - target / 20) << "less than 95% of the budget";
    ASSERT_LE(lo, hi) << "no single rho gives every linear its count";
    const double rho = lo + 0.5 * (hi - lo);
    for (std::size_t il = 0; il < w.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const quant::IqrRule rule(w[il][i]);
            EXPECT_TRUE(at::equal(sel.outliers[il][i], rule.mask(rho)))
                << "layer " << il << " " << lname(i);
            // Every outlier is outside [q1 - rho iqr, q3 + rho iqr] (the rest: the mask equality).
            const at::Tensor a = w[il][i].abs();
            EXPECT_EQ((a.lt(rule.threshold(rho)) & sel.outliers[il][i]).sum().item<int64_t>(), 0);
        }
}

TEST(SelectSparse, RandomOutliersPerLinearCountAndSeedDeterministic) {
    Stories             su;
    const model::Stage  stage = su.stage();
    test::SoloTransport t;
    io::JobRequant      r   = fixed_outliers(0.0045);
    r.outlier_select        = io::OutlierSelect::Random;
    const SparseSelection a = select_sparse(stage, t, r, nullptr);
    const SparseSelection b = select_sparse(stage, t, r, nullptr);
    const SparseSelection f = select_sparse(stage, t, fixed_outliers(0.0045), nullptr);
    ASSERT_EQ(a.outliers.size(), stage.weights().layers.size());
    int64_t n_same_as_fixed = 0, n = 0;
    for (std::size_t il = 0; il < a.outliers.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const at::Tensor& m     = a.outliers[il][i];
            const int64_t     numel = m.numel();
            EXPECT_EQ(m.sum().item<int64_t>(), std::llround(0.0045 * double(numel)))
                << "layer " << il << " " << lname(i);
            EXPECT_TRUE(at::equal(m, b.outliers[il][i])) << "layer " << il << " " << lname(i);
            n_same_as_fixed += (m & f.outliers[il][i]).sum().item<int64_t>();
            n += m.sum().item<int64_t>();
        }
    // Random positions, not the large weights: few coincide with the fixed rule's outliers.
    EXPECT_LT(n_same_as_fixed, n / 10);
}

TEST(SelectSparse, FisherSignificantFirstThenTheRangeRuleAmongTheRest) {
    // SqueezeLLM's order (outliers.py): the top of the Fisher diagonal over the whole linear,
    // then the range rule's outliers among the other weights, the budget still met.
    Stories             su;
    const model::Stage  stage = su.stage();
    test::SoloTransport t;
    io::JobRequant      r = fixed_outliers(0.0045);
    r.significant_ratio   = 0.0005;
    r.significant_select  = io::SignificantSelect::Fisher;
    // A Fisher diagonal that puts some of its largest values on the outliers.
    const auto          w   = stage_linears(stage);
    auto                gen = at::detail::createCPUGenerator(11);
    model::StageTensors fisher(w.size());
    for (std::size_t il = 0; il < w.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            fisher[il][i] = at::rand(w[il][i].sizes(), gen) * w[il][i].square();
    const SparseSelection sel = select_sparse(stage, t, r, &fisher);
    ASSERT_EQ(sel.significant.size(), w.size());
    int64_t n = 0, n_out = 0;
    for (std::size_t il = 0; il < w.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            n += w[il][i].numel(), n_out += sel.outliers[il][i].sum().item<int64_t>();
    EXPECT_LE(n_out, int64_t(std::floor(0.0045 * double(n))));
    EXPECT_GE(n_out, int64_t(std::floor(0.0045 * double(n))) - 8) << "far below the budget";
    for (std::size_t il = 0; il < w.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const at::Tensor& s     = sel.significant[il][i];
            const at::Tensor& o     = sel.outliers[il][i];
            const std::string where = "layer " + std::to_string(il) + " " + lname(i);
            EXPECT_EQ(s.sum().item<int64_t>(), std::llround(0.0005 * double(s.numel()))) << where;
            EXPECT_EQ((s & o).sum().item<int64_t>(), 0) << where << ": an outlier is significant";
            const at::Tensor& f = fisher[il][i];
            EXPECT_TRUE(at::equal(s, quant::topk_mask(f, s.sum().item<int64_t>()))) << where;
            const at::Tensor rest = ~(s | o);
            EXPECT_GE(f.masked_select(s).min().item<float>(),
                      f.masked_select(rest).max().item<float>())
                << where << ": a free weight has a larger Fisher value than a significant one";
        }
    // Without outliers the Fisher top-k may include the largest weights.
    io::JobRequant only_sig  = r;
    only_sig.outlier_ratio   = 0;
    const SparseSelection s2 = select_sparse(stage, t, only_sig, &fisher);
    EXPECT_TRUE(s2.outliers.empty());
    for (std::size_t il = 0; il < w.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            EXPECT_TRUE(at::equal(
                s2.significant[il][i],
                quant::topk_mask(fisher[il][i], std::llround(0.0005 * double(w[il][i].numel())))));
}

TEST(SelectSparse, GivenOutliersAreReturnedAsGiven) {
    Stories             su;
    const model::Stage  stage = su.stage();
    test::SoloTransport t;
    const auto          w = stage_linears(stage);
    model::StageTensors given(w.size());
    for (std::size_t il = 0; il < w.size(); ++il) given[il] = topk_masks(w[il], 7);
    io::JobRequant r          = fixed_outliers(0.0045);
    r.outlier_select          = io::OutlierSelect::Adaptive;  // Alg. 1's: they come in as `given`
    const SparseSelection sel = select_sparse(stage, t, r, nullptr, &given);
    ASSERT_EQ(sel.outliers.size(), given.size());
    for (std::size_t il = 0; il < w.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            EXPECT_TRUE(at::equal(sel.outliers[il][i], given[il][i]));
    EXPECT_TRUE(sel.significant.empty());
}

TEST(SelectSparse, NothingAtRatioZeroAndMisuseRefused) {
    Stories               su;
    const model::Stage    stage = su.stage();
    test::SoloTransport   t;
    const SparseSelection none = select_sparse(stage, t, fixed_outliers(0.0), nullptr);
    EXPECT_TRUE(none.outliers.empty());
    EXPECT_TRUE(none.significant.empty());
    io::JobRequant adaptive = fixed_outliers(0.01);
    adaptive.outlier_select = io::OutlierSelect::Adaptive;
    EXPECT_THROW(select_sparse(stage, t, adaptive, nullptr), InternalError);
    io::JobRequant fisher     = fixed_outliers(0.0);
    fisher.significant_ratio  = 0.001;
    fisher.significant_select = io::SignificantSelect::Fisher;
    EXPECT_THROW(select_sparse(stage, t, fisher, nullptr), InternalError);
    // PQI significant weights are chosen after quantization (detach.h), not here.
    fisher.significant_select = io::SignificantSelect::Pqi;
    EXPECT_TRUE(select_sparse(stage, t, fisher, nullptr).significant.empty());
}

// ---------------------------------------------------------------- adaptive_outliers (Alg. 1)

TEST(AdaptiveOutliers, RtnWithinTheBudgetTopKMasksAndNeverWorse) {
    Stories             su;
    const model::Stage  stage = su.stage();
    test::SoloTransport t;
    io::JobRequant      r         = fixed_outliers(0.0045);
    r.outlier_select              = io::OutlierSelect::Adaptive;
    const io::JobQuant          p = rtn3();
    sensitivity::StatsCollector stats(
        sensitivity::stats_options(quant::quantizer(io::QuantMethod::Rtn).needs, 2048, 1));
    nlohmann::json report;
    const auto     masks  = adaptive_outliers(stage, t, p, r, stats, nullptr, report);
    const auto     w      = stage_linears(stage);
    const int64_t  budget = int64_t(std::floor(0.0045 * double(n_linear_weights(stage))));
    const auto&    sel    = report["outlier_selection"];
    ASSERT_EQ(masks.size(), w.size());
    EXPECT_EQ(sel["budget"].get<int64_t>(), budget);
    ASSERT_EQ(sel["per_linear"].size(), w.size() * model::kNumLinears);

    int64_t total = 0, reported = 0;
    double  obj = 0, obj_dense = 0;
    for (const auto& e : sel["per_linear"]) {
        const auto        il = e["layer"].get<std::size_t>();
        const std::string ln = e["linear"].get<std::string>();
        std::size_t       i  = 0;
        while (i < model::kNumLinears && ln != lname(i)) ++i;
        ASSERT_LT(i, model::kNumLinears) << ln;
        const auto        count = int64_t(e["count"].get<double>());
        const std::string where = "layer " + std::to_string(il) + " " + ln;
        ASSERT_TRUE(masks[il][i].defined()) << where;
        EXPECT_EQ(masks[il][i].sum().item<int64_t>(), count) << where;
        EXPECT_TRUE(at::equal(masks[il][i], quant::topk_mask(w[il][i].abs(), count))) << where;
        // RTN's objective without outliers is its rounding error sum dW^2.
        const at::Tensor d =
            w[il][i].to(at::kDouble) - quant::dequantize(quant::rtn_quantize(w[il][i], {3, 32}));
        EXPECT_NEAR(e["objective_dense"].get<double>(), d.square().sum().item<double>(),
                    1e-9 * e["objective_dense"].get<double>())
            << where;
        reported += count;
        obj += e["objective"].get<double>();
        obj_dense += e["objective_dense"].get<double>();
    }
    for (const auto& l : masks)
        for (const auto& m : l) total += m.sum().item<int64_t>();
    std::printf("Alg. 1 RTN: %lld outliers of budget %lld, objective %.6e -> %.6e\n",
                (long long)total, (long long)budget, obj_dense, obj);
    EXPECT_EQ(total, reported);
    EXPECT_EQ(total, sel["count"].get<int64_t>());
    EXPECT_LE(total, budget);
    EXPECT_GE(total, budget - budget / 50) << "less than 98% of the budget";
    EXPECT_LE(obj, obj_dense) << "outliers raised RTN's objective";
}

TEST(AdaptiveOutliers, CandidatesMustStartWithNoOutliers) {
    Stories             su;
    const model::Stage  stage = su.stage();
    test::SoloTransport t;
    io::JobRequant      r = fixed_outliers(0.0045);
    r.outlier_select      = io::OutlierSelect::Adaptive;
    r.outlier_candidates  = {0.5, 1};
    sensitivity::StatsCollector stats;
    nlohmann::json              report;
    EXPECT_THROW(adaptive_outliers(stage, t, rtn3(), r, stats, nullptr, report), ConfigError);
}

}  // namespace
}  // namespace rq::decompose
