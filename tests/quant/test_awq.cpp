// AWQ (requant/quant/awq.h): on real llama-7m-en layers with inputs from calibration text it never
// does worse than RTN in the group's output error on the sampled inputs; a one-point grid without
// clipping is RTN; the stored s is positive fp16 and favours loud channels; clip = false keeps the
// full range; bad inputs throw. Not a test of perplexity.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <utility>
#include <vector>

#include "../common/shared_dir.h"
#include "real_layers.h"
#include "requant/error.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/llama.h"
#include "requant/quant/awq.h"
#include "requant/quant/gptq.h"
#include "requant/quant/rtn.h"

namespace rq::quant {
namespace {

using model::Linear;
using model::LinearInput;

constexpr int64_t kMaxSamples = 2048;  // sampled rows per linear input
constexpr double  kMaxRelErr  = 0.25;  // ||dequant - w|| / ||w|| at 4 bits

AwqParams params(int bits, int64_t G, int grid = 20, bool clip = true) {
    AwqParams p;
    p.bits       = bits;
    p.group_size = G;
    p.grid       = grid;
    p.clip       = clip;
    return p;
}

struct Inputs {
    at::Tensor x;         // float [n, I]: every stride-th row, n <= kMaxSamples
    at::Tensor abs_mean;  // float [I]: mean |x| over all rows
};

class AwqLlama7m : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        const auto& r = test::real_layers();
        inputs_       = new std::map<std::pair<int64_t, LinearInput>, Inputs>();
        for (const auto& [key, all] : r.rows) {
            const int64_t stride = (all.size(0) + kMaxSamples - 1) / kMaxSamples;
            (*inputs_)[key]      = {all.slice(0, 0, all.size(0), stride).contiguous(),
                                    all.abs().mean(0)};
        }
        weights_ = new std::vector<model::LayerWeights>(r.layers);
    }
    static void TearDownTestSuite() {
        delete inputs_;
        delete weights_;
    }
    // The linears reading `which`, q/k unclipped.
    static std::vector<AwqLinear> group(const model::LayerWeights& lw, LinearInput which) {
        std::vector<AwqLinear> g;
        for (Linear l : model::kLinears)
            if (model::linear_input(l) == which)
                g.push_back({lw.linear(l), l != Linear::Q && l != Linear::K});
        return g;
    }

    static std::map<std::pair<int64_t, LinearInput>, Inputs>* inputs_;
    static std::vector<model::LayerWeights>*                  weights_;
};
std::map<std::pair<int64_t, LinearInput>, Inputs>* AwqLlama7m::inputs_  = nullptr;
std::vector<model::LayerWeights>*                  AwqLlama7m::weights_ = nullptr;

constexpr LinearInput kInputs[]     = {LinearInput::Attn, LinearInput::AttnOut, LinearInput::Mlp,
                                       LinearInput::MlpOut};
const char*           kInputNames[] = {"q/k/v", "o", "gate/up", "down"};

double group_error(const std::vector<AwqLinear>& g, const std::vector<QuantizedLinear>& q,
                   const at::Tensor& H) {
    double e = 0;
    for (std::size_t i = 0; i < g.size(); ++i) e += output_error(g[i].w, dequantize(q[i]), H);
    return e;
}

TEST_F(AwqLlama7m, NeverWorseThanRtnOnRealLayers) {
    ASSERT_EQ(inputs_->size(), 8u) << "4 linear inputs x 2 layers observed";
    int64_t n_worse = 0, n_runs = 0, n_shrunk = 0, n_shrunk_noclip = 0;
    std::printf("# layer input     bits    G   rtn_err    noclip/rtn  awq/rtn  s_max/s_min\n");
    for (std::size_t li = 0; li < weights_->size(); ++li) {
        const int64_t layer = li == 0 ? 0 : 4;
        for (int k = 0; k < 4; ++k) {
            const Inputs&                in = inputs_->at({layer, kInputs[k]});
            const std::vector<AwqLinear> g  = group((*weights_)[li], kInputs[k]);
            const at::Tensor             xd = in.x.to(at::kDouble), H = xd.t().matmul(xd);
            for (RtnParams c : {RtnParams{4, 128}, RtnParams{3, 128}}) {
                std::vector<QuantizedLinear> rtn;
                for (const AwqLinear& l : g) rtn.push_back(rtn_quantize(l.w, c));
                const auto q = awq_quantize(g, in.x, in.abs_mean, params(c.bits, c.group_size));
                const auto q0 =
                    awq_quantize(g, in.x, in.abs_mean, params(c.bits, c.group_size, 20, false));
                const double     e_rtn = group_error(g, rtn, H), e = group_error(g, q, H);
                const at::Tensor s = q[0].in_scale.to(at::kFloat);
                std::printf("  %5lld %-9s %4d %4lld %11.4g %9.4f %9.4f %9.3g\n", (long long)layer,
                            kInputNames[k], c.bits, (long long)c.group_size, e_rtn,
                            group_error(g, q0, H) / e_rtn, e / e_rtn,
                            (s.max() / s.min()).item<double>());
                ++n_runs;
                if (!(e <= e_rtn)) {
                    ++n_worse;
                    ADD_FAILURE() << "layer " << layer << " " << kInputNames[k] << " " << c.bits
                                  << " bits: awq " << e << " > rtn " << e_rtn;
                }
                for (std::size_t i = 0; i < g.size(); ++i) {  // same s, clipping shrinks only
                    EXPECT_TRUE(at::equal(q[i].in_scale, q0[i].in_scale));
                    const at::Tensor sc  = q[i].scales.to(at::kFloat),
                                     sc0 = q0[i].scales.to(at::kFloat);
                    EXPECT_TRUE((sc <= sc0).all().item<bool>()) << kInputNames[k] << " " << i;
                    (g[i].clip ? n_shrunk : n_shrunk_noclip) += (sc < sc0).sum().item<int64_t>();
                }
            }
        }
    }
    EXPECT_GT(n_shrunk, 0) << "clipping never shrank a group's range";
    EXPECT_EQ(n_shrunk_noclip, 0) << "q/k (clip = false) were clipped";
    std::printf("# runs : %lld   #worse than rtn : %lld   #clipped (row, group) : %lld   %s\n",
                (long long)n_runs, (long long)n_worse, (long long)n_shrunk,
                n_worse ? "FAIL" : "OK");
}

// Synthetic: w float [kO, kI]; x float [kN, kI] with a few loud channels.
constexpr int64_t kO = 48, kI = 96, kN = 512;
constexpr int64_t kLoud = 7;

at::Tensor synth_weights(uint64_t seed) {
    auto gen = at::detail::createCPUGenerator(seed);
    return at::randn({kO, kI}, gen) * 0.05;
}
at::Tensor synth_inputs(uint64_t seed) {
    auto       gen = at::detail::createCPUGenerator(seed);
    at::Tensor x   = at::randn({kN, kI}, gen);
    x.select(1, kLoud).mul_(50.0);
    x.narrow(1, 40, 3).mul_(20.0);
    return x;
}

TEST(Awq, OnePointGridWithoutClipIsRtn) {
    const at::Tensor w = synth_weights(1), x = synth_inputs(2), m = x.abs().mean(0);
    for (int bits : {2, 3, 4, 8})
        for (int64_t G : {int64_t(0), int64_t(32), int64_t(64)}) {
            const QuantizedLinear q = awq_quantize({{w, true}}, x, m, params(bits, G, 1, false))[0];
            const QuantizedLinear r = rtn_quantize(w, {bits, G});
            EXPECT_TRUE(at::equal(q.in_scale, at::ones({kI}, at::kHalf))) << bits << " G " << G;
            EXPECT_TRUE(at::equal(q.codes, r.codes)) << bits << " bits G " << G;
            EXPECT_TRUE(at::equal(dequantize(q), dequantize(r))) << bits << " bits G " << G;
        }
}

TEST(Awq, WithoutTheScaleSearchNoInScaleAndClippingStillRuns) {
    const at::Tensor w = synth_weights(6), x = synth_inputs(7), m = x.abs().mean(0);
    AwqParams        p          = params(3, 32, 20, false);
    p.scale                     = false;
    const QuantizedLinear plain = awq_quantize({{w, true}}, x, m, p)[0];
    EXPECT_FALSE(plain.in_scale.defined());
    EXPECT_TRUE(at::equal(plain.codes, rtn_quantize(w, {3, 32}).codes));
    p.clip                        = true;
    const QuantizedLinear clipped = awq_quantize({{w, true}}, x, m, p)[0];
    EXPECT_FALSE(clipped.in_scale.defined());
    EXPECT_FALSE(at::equal(clipped.scales, plain.scales)) << "no group was clipped";
}

TEST(Awq, ABlockLossThatIsTheLinearsOwnOutputErrorGivesTheSameResult) {
    const at::Tensor w1 = synth_weights(10), w2 = synth_weights(11), x = synth_inputs(12);
    const at::Tensor m = x.abs().mean(0), xd = x.to(at::kDouble), H = xd.t().matmul(xd);
    const std::vector<AwqLinear> g     = {{w1, true}, {w2, false}};
    int                          calls = 0;
    const BlockLoss              own   = [&](const std::vector<at::Tensor>& w_hat) {
        ++calls;
        EXPECT_EQ(w_hat.size(), 2u);
        double e = 0;
        for (std::size_t k = 0; k < w_hat.size(); ++k) e += output_error(g[k].w, w_hat[k], H);
        return e;
    };
    const auto a = awq_quantize(g, x, m, params(3, 32));
    const auto b = awq_quantize(g, x, m, params(3, 32), own);
    EXPECT_EQ(calls, 20) << "one call per grid point";
    for (std::size_t k = 0; k < a.size(); ++k) {
        EXPECT_TRUE(at::equal(a[k].in_scale, b[k].in_scale)) << k;
        EXPECT_TRUE(at::equal(a[k].codes, b[k].codes)) << k;
        EXPECT_TRUE(at::equal(a[k].scales, b[k].scales)) << k;
    }
}

TEST(Awq, TheBlockLossDecidesTheScale) {
    // A loss that falls with every call picks the last grid point; a flat one keeps alpha = 0
    // (s = 1: a later alpha must be strictly better). The w_hat it sees is what is stored.
    const at::Tensor w = synth_weights(13), x = synth_inputs(14), m = x.abs().mean(0);
    int              calls = 0;
    at::Tensor       last;
    const BlockLoss  falling = [&](const std::vector<at::Tensor>& w_hat) {
        last = w_hat[0];
        return -double(++calls);
    };
    const QuantizedLinear q = awq_quantize({{w, false}}, x, m, params(4, 32, 5, false), falling)[0];
    EXPECT_TRUE(at::equal(dequantize(q), last));
    const at::Tensor s  = m.to(at::kDouble).pow(0.8).clamp_min(1e-4);
    const at::Tensor s4 = (s / (s.max() * s.min()).sqrt()).to(at::kHalf);
    EXPECT_TRUE(at::equal(q.in_scale, s4)) << "not alpha = 4/5";
    const BlockLoss       flat = [](const std::vector<at::Tensor>&) { return 1.0; };
    const QuantizedLinear q0   = awq_quantize({{w, false}}, x, m, params(4, 32, 5, false), flat)[0];
    EXPECT_TRUE(at::equal(q0.in_scale, at::ones({kI}, at::kHalf)));
}

TEST(Awq, ScalesAreClampedAfterThePower) {
    // max(m^alpha, 1e-4), not max(m, 1e-4)^alpha: with grid 2 (alpha 0 or 1/2) and a channel
    // whose mean |x| is 1e-6, alpha = 1/2 gives it 1e-3 / sqrt(max min) (the floor would give
    // 1e-2 / sqrt(max min)).
    const at::Tensor w = synth_weights(8), x = synth_inputs(9);
    at::Tensor       m      = x.abs().mean(0);
    m[5]                    = 1e-6;
    const QuantizedLinear q = awq_quantize({{w, false}}, x, m, params(4, 32, 2, false))[0];
    const at::Tensor      s = q.in_scale.to(at::kDouble);
    if (at::equal(s, at::ones_like(s))) GTEST_FAIL() << "alpha = 0 won: the case tests nothing";
    const at::Tensor r    = m.to(at::kDouble).pow(0.5).clamp_min(1e-4);
    const double     norm = std::sqrt(r.max().item<double>() * r.min().item<double>());
    EXPECT_NEAR(s[5].item<double>(), 1e-3 / norm, 1e-3 / norm * 1e-3);
}

TEST(Awq, ScalesArePositiveFp16AndFavourLoudChannels) {
    const at::Tensor w1 = synth_weights(3), w2 = synth_weights(4), x = synth_inputs(5);
    const at::Tensor m  = x.abs().mean(0);
    const auto       qs = awq_quantize({{w1, true}, {w2, false}}, x, m, params(3, 32));
    ASSERT_EQ(qs.size(), 2u);
    for (const QuantizedLinear& q : qs) {
        ASSERT_EQ(q.in_scale.scalar_type(), at::kHalf);
        ASSERT_EQ(q.in_scale.sizes(), at::IntArrayRef({kI}));
        EXPECT_TRUE((q.in_scale.to(at::kFloat) > 0).all().item<bool>());
        EXPECT_TRUE(at::equal(q.in_scale, qs[0].in_scale)) << "one s per group";
        const at::Tensor d = dequantize(q);
        ASSERT_EQ(d.sizes(), at::IntArrayRef({kO, kI}));
    }
    for (std::size_t i = 0; i < 2; ++i) {
        const at::Tensor& w   = i == 0 ? w1 : w2;
        const double      rel = ((dequantize(qs[i]) - w).norm() / w.norm()).item<double>();
        EXPECT_LT(rel, 2 * kMaxRelErr) << "3 bits, linear " << i;  // 3 bits: twice the 4-bit bound
    }
    const at::Tensor s = qs[0].in_scale.to(at::kFloat);
    EXPECT_GT(s[kLoud].item<float>(), s.narrow(0, 0, 5).max().item<float>())
        << "loud channel s " << s[kLoud].item<float>();
    const QuantizedLinear q4 = awq_quantize({{w1, true}}, x, m, params(4, 32))[0];
    EXPECT_LT(((dequantize(q4) - w1).norm() / w1.norm()).item<double>(), kMaxRelErr);
    // Deterministic: the same call gives the same codes.
    const QuantizedLinear again = awq_quantize({{w1, true}}, x, m, params(4, 32))[0];
    EXPECT_TRUE(at::equal(again.codes, q4.codes) && at::equal(again.scales, q4.scales));
}

TEST(Awq, NoClipKeepsTheFullRange) {  // codes are RTN's of W diag(s): the range is max |w s|
    const at::Tensor w = synth_weights(6), x = synth_inputs(7), m = x.abs().mean(0);
    for (int64_t G : {int64_t(0), int64_t(40)}) {
        const auto            q = awq_quantize({{w, false}, {w, true}}, x, m, params(3, G));
        const at::Tensor      s = q[0].in_scale.to(at::kFloat);
        const QuantizedLinear r = rtn_quantize(w * s, {3, G});
        EXPECT_TRUE(at::equal(q[0].codes, r.codes)) << "G " << G;
        EXPECT_TRUE(at::equal(q[0].scales, r.scales) && at::equal(q[0].zeros, r.zeros)) << G;
        EXPECT_TRUE((q[1].scales.to(at::kFloat) <= r.scales.to(at::kFloat)).all().item<bool>());
        const at::Tensor H = x.to(at::kDouble).t().matmul(x.to(at::kDouble));
        EXPECT_LE(output_error(w, dequantize(q[1]), H), output_error(w, dequantize(q[0]), H))
            << "clipping made the output error worse, G " << G;
    }
}

// The next linear's scale folded into the rows (llm-awq apply_scale on up_proj): the search is
// the same, the codes are those of diag(1/r) W diag(s), and dequant is in the original basis.
TEST(Awq, ARowScaleQuantizesTheFoldedRowsInTheOriginalBasis) {
    const at::Tensor w = synth_weights(13), x = synth_inputs(14), m = x.abs().mean(0);
    auto             gen = at::detail::createCPUGenerator(15);
    const at::Tensor r   = (at::rand({w.size(0)}, gen) * 3.75 + 0.25).to(at::kHalf).to(at::kFloat);
    const auto       plain = awq_quantize({{w, false}}, x, m, params(3, 32))[0];
    const auto       rowed = awq_quantize({{w, false, r}}, x, m, params(3, 32))[0];
    ASSERT_TRUE(rowed.out_scale.defined());
    EXPECT_TRUE(at::equal(rowed.out_scale.to(at::kFloat), r));
    EXPECT_TRUE(at::equal(rowed.in_scale, plain.in_scale)) << "the search saw W";
    const at::Tensor      s = rowed.in_scale.to(at::kFloat);
    const QuantizedLinear q = rtn_quantize(w * s / r.unsqueeze(1), {3, 32});
    EXPECT_TRUE(at::equal(rowed.codes, q.codes) && at::equal(rowed.scales, q.scales));
    const double e_plain = (dequantize(plain) - w).norm().item<double>();
    const double e_rowed = (dequantize(rowed) - w).norm().item<double>();
    EXPECT_NEAR(e_rowed / e_plain, 1.0, 0.01) << "not the original basis";
    // Clipped: the choices scale with the row, so the codes are plain's but where the fp16
    // rounding of a group's scale moves a weight across a rounding boundary.
    const auto   c_plain = awq_quantize({{w, true}}, x, m, params(3, 32))[0];
    const auto   c_rowed = awq_quantize({{w, true, r}}, x, m, params(3, 32))[0];
    const double differ  = c_rowed.codes.ne(c_plain.codes).to(at::kDouble).mean().item<double>();
    EXPECT_LT(differ, 0.02);
    EXPECT_THROW(awq_quantize({{w, true, -r}}, x, m, params(3, 32)), NumericError);
    EXPECT_THROW(awq_quantize({{w, true, r.narrow(0, 1, r.size(0) - 1)}}, x, m, params(3, 32)),
                 ShapeError);
}

TEST(Awq, BadInputsThrow) {
    const at::Tensor w = synth_weights(8), x = synth_inputs(9), m = x.abs().mean(0);
    const AwqParams  p = params(4, 32);
    EXPECT_THROW(awq_quantize({{w, true}}, at::cat({x, x.narrow(1, 0, 1)}, 1), m, p), ShapeError);
    EXPECT_THROW(awq_quantize({{w, true}}, x, m.narrow(0, 0, kI - 1), p), ShapeError);
    EXPECT_THROW(awq_quantize({{w, true}, {w.narrow(1, 0, kI - 8), true}}, x, m, p), ShapeError);
    EXPECT_THROW(awq_quantize({{w.t(), true}}, x, m, p), ShapeError);
    EXPECT_THROW(awq_quantize({{w.flatten(), true}}, x, m, p), ShapeError);
    EXPECT_THROW(awq_quantize({{w, true}}, x.flatten(), m, p), ShapeError);
    EXPECT_THROW(awq_quantize({}, x, m, p), ShapeError);
    EXPECT_THROW(awq_quantize({{w, true}}, x, -m, p), NumericError);
    EXPECT_THROW(awq_quantize({{w, true}}, x, m, params(9, 32)), ConfigError);
    EXPECT_THROW(awq_quantize({{w, true}}, x, m, params(4, 1)), ConfigError);
    EXPECT_THROW(awq_quantize({{w, true}}, x, m, params(4, 32, 0)), ConfigError);
    AwqParams bad = p;
    bad.clip_grid = 0;
    EXPECT_THROW(awq_quantize({{w, true}}, x, m, bad), ConfigError);
    for (double s : {-0.1, 1.0}) {
        bad            = p;
        bad.max_shrink = s;
        EXPECT_THROW(awq_quantize({{w, true}}, x, m, bad), ConfigError) << "max_shrink " << s;
    }
}

}  // namespace
}  // namespace rq::quant
