// Calibration statistics (requant/sensitivity/stats.h) on one process: StatsCollector's X^T X,
// mean |x| and strided row samples against the same quantities computed from every observed row
// at once; its refusal of inputs it never saw; stats_options' mapping of quant::StatsNeeds; the
// Fisher diagonal of stories260k against per-sequence backward passes done here; and
// collect_forward_stats against a plain forward with the collector as observer. The collectives
// run over test::SoloTransport (no MPI); tests/mpi/ covers the pipeline across ranks.
// Legend: B batch, T sequence, I in_features, O out_features, N calibration sequences.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "../common/shared_dir.h"
#include "../common/solo_transport.h"
#include "requant/error.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/llama.h"
#include "requant/model/weights.h"
#include "requant/quant/quantizer.h"
#include "requant/sensitivity/stats.h"

namespace rq::sensitivity {
namespace {

using model::LinearInput;

// X^T X against the fp64 product of all rows. The chunks hold multiples of 1/8 below 8 in
// magnitude, so every product and partial sum is exact in fp32 whatever order a BLAS kernel
// sums in: only a wrong accumulation can exceed this.
constexpr double kXtxRel     = 1e-10;
constexpr double kAbsMeanRel = 1e-10;  // mean |x| of the same exact values, fp64 sums
// Fisher diagonal: fp32 forward/backward with the loss scaled differently (1/(N(T-1)) then x N
// in the library, 1/(T-1) here), squared.
constexpr double kFisherRel = 1e-4;
// Microbatched (runner) vs whole-batch activations: fp32 GEMMs of different shapes, up to
// ~7e-6 measured on one CPU; a lost or repeated microbatch moves X^T X by about a third.
constexpr double kForwardRel = 1e-4;

constexpr int64_t kLayer = 3;   // any absolute layer index
constexpr int64_t kI     = 24;  // I

// max |a - b| / max |b| (0 when both are zero), in fp64.
double rel_diff(const at::Tensor& a, const at::Tensor& b) {
    const at::Tensor ad = a.to(at::kDouble), bd = b.to(at::kDouble);
    const double     den = bd.abs().max().item<double>();
    const double     num = (ad - bd).abs().max().item<double>();
    return den > 0 ? num / den : num;
}

// Prints the first 5 values of both and the max difference (STYLE: whole-model comparisons).
void print_compare(const std::string& what, const at::Tensor& got, const at::Tensor& want) {
    const at::Tensor g = got.flatten().to(at::kDouble), w = want.flatten().to(at::kDouble);
    std::printf("%-28s got", what.c_str());
    for (int64_t i = 0; i < std::min<int64_t>(5, g.numel()); ++i)
        std::printf(" %.6g", g[i].item<double>());
    std::printf("  want");
    for (int64_t i = 0; i < std::min<int64_t>(5, w.numel()); ++i)
        std::printf(" %.6g", w[i].item<double>());
    std::printf("  maxdiff %.3g\n", (g - w).abs().max().item<double>());
}

// float [B, T, I]: multiples of 1/8 in (-8, 8), from a fixed seed.
at::Tensor exact_chunk(int64_t B, int64_t T, at::Generator& gen) {
    return at::clamp(at::round(at::randn({B, T, kI}, gen) * 16.0) / 8.0, -7.875, 7.875);
}

// Chunks of 14, 3, 15 and 4 rows (36 in all). With stride 5 the samples are rows 0, 5, ..., 35:
// chunks 2, 3 and 4 (rows 14.., 17.., 32..) start off the stride and hold one, three and one.
std::vector<at::Tensor> chunks() {
    auto gen = at::detail::createCPUGenerator(20240601);
    return {exact_chunk(2, 7, gen), exact_chunk(1, 3, gen), exact_chunk(3, 5, gen),
            exact_chunk(1, 4, gen)};
}

// float [rows, I]: every chunk's rows in observation order.
at::Tensor all_rows(const std::vector<at::Tensor>& xs) {
    std::vector<at::Tensor> rows;
    for (const auto& x : xs) rows.push_back(x.reshape({-1, kI}));
    return at::cat(rows, 0);
}

TEST(StatsCollector, AccumulatesXtxAbsMeanAndStridedSamples) {
    const auto       xs     = chunks();
    const at::Tensor X      = all_rows(xs);  // float [36, I]
    const int64_t    n      = X.size(0);
    const int64_t    max_s  = 7;          // the reference AWQ's x[0 :: n // n_sample_token]
    const int64_t    stride = n / max_s;  // 5: 8 rows, more than max_s (ceil would keep 6)
    ASSERT_EQ(n, 36);
    ASSERT_EQ(stride, 5);

    StatsOptions o;
    o.xtx         = true;
    o.abs_mean    = true;
    o.max_samples = max_s;
    o.total_rows  = n;
    StatsCollector s(o);
    for (const auto& x : xs) s.observe(kLayer, LinearInput::Attn, x);

    const at::Tensor Xd  = X.to(at::kDouble);
    const at::Tensor xtx = Xd.t().matmul(Xd);  // double [I, I]
    ASSERT_EQ(s.xtx(kLayer, LinearInput::Attn).scalar_type(), at::kDouble);
    ASSERT_EQ(s.xtx(kLayer, LinearInput::Attn).sizes(), xtx.sizes());
    EXPECT_LE(rel_diff(s.xtx(kLayer, LinearInput::Attn), xtx), kXtxRel);

    const at::Tensor am = Xd.abs().mean(0);  // [I]
    ASSERT_EQ(s.abs_mean(kLayer, LinearInput::Attn).scalar_type(), at::kFloat);
    ASSERT_EQ(s.abs_mean(kLayer, LinearInput::Attn).sizes(), am.sizes());
    // Stored as float: the fp32 rounding of the exact mean.
    EXPECT_LE(rel_diff(s.abs_mean(kLayer, LinearInput::Attn), am), kAbsMeanRel + 1.0 / (1 << 23));

    // Rows whose global index is a multiple of the stride, picked one by one here.
    std::vector<at::Tensor> want;
    for (int64_t r = 0; r < n; ++r)
        if (r % stride == 0) want.push_back(X[r]);
    const at::Tensor samples = s.samples(kLayer, LinearInput::Attn);
    ASSERT_EQ(samples.size(0), int64_t(want.size()));
    EXPECT_EQ(samples.size(0), 8);
    EXPECT_TRUE(at::equal(samples, at::stack(want, 0)));
}

TEST(StatsCollector, KeepsEveryRowOfTheBlockInputsAsSequences) {
    auto                          gen = at::detail::createCPUGenerator(20261203);
    const std::vector<at::Tensor> xs  = {exact_chunk(2, 5, gen), exact_chunk(1, 5, gen),
                                         exact_chunk(3, 5, gen)};  // [B, T, I]
    StatsOptions                  o;
    o.rows = true;
    StatsCollector s(o);
    for (const auto& x : xs) {
        s.observe(kLayer, LinearInput::Attn, x);
        s.observe(kLayer, LinearInput::AttnOut, x);
    }
    const at::Tensor        rows = s.rows(kLayer, LinearInput::Attn);
    std::vector<at::Tensor> want;
    for (const auto& x : xs) want.push_back(x.to(at::kFloat));
    EXPECT_TRUE(at::equal(rows, at::cat(want, 0)));  // [N, T, I], in observation order
    EXPECT_TRUE(at::equal(s.input(kLayer, LinearInput::Attn).rows, rows));
    EXPECT_FALSE(s.rows(kLayer, LinearInput::AttnOut).defined());  // only the block inputs
    xs[0].fill_(7.0);
    EXPECT_TRUE(at::equal(s.rows(kLayer, LinearInput::Attn), rows));  // copies
}

TEST(StatsCollector, KeepsEveryRowWhenThereAreFewerThanMaxSamples) {
    const auto   xs = chunks();
    StatsOptions o;
    o.max_samples = 1000;
    o.total_rows  = 36;
    StatsCollector s(o);
    for (const auto& x : xs) s.observe(kLayer, LinearInput::Mlp, x);
    EXPECT_TRUE(at::equal(s.samples(kLayer, LinearInput::Mlp), all_rows(xs)));
}

TEST(StatsCollector, SamplesAreCopies) {
    at::Tensor   x = chunks()[0].clone();
    StatsOptions o;
    o.max_samples = 100;
    o.total_rows  = x.size(0) * x.size(1);
    StatsCollector s(o);
    s.observe(kLayer, LinearInput::Attn, x);
    const at::Tensor before = x.reshape({-1, kI}).clone();
    x.fill_(123.0f);  // the forward reuses its buffers
    EXPECT_TRUE(at::equal(s.samples(kLayer, LinearInput::Attn), before));
}

TEST(StatsCollector, KeepsInputsAndLayersApart) {
    const auto   xs = chunks();
    StatsOptions o;
    o.xtx = true;
    StatsCollector s(o);
    s.observe(kLayer, LinearInput::Attn, xs[0]);
    s.observe(kLayer, LinearInput::Mlp, xs[2]);
    s.observe(kLayer + 1, LinearInput::Attn, xs[3]);
    const auto xtx = [](const at::Tensor& x) {
        const at::Tensor d = x.reshape({-1, kI}).to(at::kDouble);
        return d.t().matmul(d);
    };
    EXPECT_LE(rel_diff(s.xtx(kLayer, LinearInput::Attn), xtx(xs[0])), kXtxRel);
    EXPECT_LE(rel_diff(s.xtx(kLayer, LinearInput::Mlp), xtx(xs[2])), kXtxRel);
    EXPECT_LE(rel_diff(s.xtx(kLayer + 1, LinearInput::Attn), xtx(xs[3])), kXtxRel);
}

TEST(StatsCollector, UnobservedInputThrowsInternalError) {
    StatsOptions o;
    o.xtx         = true;
    o.abs_mean    = true;
    o.max_samples = 4;
    o.total_rows  = 14;
    StatsCollector s(o);
    s.observe(kLayer, LinearInput::Attn, chunks()[0]);
    for (const auto& [layer, which] :
         {std::pair{kLayer, LinearInput::AttnOut}, std::pair{kLayer, LinearInput::MlpOut},
          std::pair{kLayer + 1, LinearInput::Attn}, std::pair{int64_t(0), LinearInput::Attn}}) {
        EXPECT_THROW(s.xtx(layer, which), InternalError) << layer << " " << int(which);
        EXPECT_THROW(s.abs_mean(layer, which), InternalError) << layer << " " << int(which);
        EXPECT_THROW(s.samples(layer, which), InternalError) << layer << " " << int(which);
        EXPECT_THROW(s.input(layer, which), InternalError) << layer << " " << int(which);
    }
    EXPECT_NO_THROW(s.input(kLayer, LinearInput::Attn));
    s.clear();
    EXPECT_THROW(s.xtx(kLayer, LinearInput::Attn), InternalError) << "after clear()";
}

TEST(StatsCollector, InputHoldsExactlyWhatTheOptionsCollect) {
    const auto xs = chunks();
    for (int mask = 0; mask < 8; ++mask) {
        StatsOptions o;
        o.xtx         = mask & 1;
        o.abs_mean    = mask & 2;
        o.max_samples = (mask & 4) ? 7 : 0;
        o.total_rows  = 36;
        StatsCollector s(o);
        for (const auto& x : xs) s.observe(kLayer, LinearInput::AttnOut, x);
        const quant::InputStats in = s.input(kLayer, LinearInput::AttnOut);
        EXPECT_EQ(in.xtx.defined(), o.xtx) << "mask " << mask;
        EXPECT_EQ(in.abs_mean.defined(), o.abs_mean) << "mask " << mask;
        EXPECT_EQ(in.samples.defined(), o.max_samples > 0) << "mask " << mask;
        const LinearInput w = LinearInput::AttnOut;
        EXPECT_TRUE(!o.xtx || at::equal(in.xtx, s.xtx(kLayer, w))) << "mask " << mask;
        EXPECT_TRUE(!o.abs_mean || at::equal(in.abs_mean, s.abs_mean(kLayer, w)))
            << "mask " << mask;
        EXPECT_TRUE(o.max_samples == 0 || at::equal(in.samples, s.samples(kLayer, w)))
            << "mask " << mask;
    }
}

TEST(StatsOptions, MapsEveryNeed) {
    for (int mask = 0; mask < 16; ++mask) {
        quant::StatsNeeds needs;
        needs.xtx            = mask & 1;
        needs.abs_mean       = mask & 2;
        needs.samples        = mask & 4;
        needs.fisher         = mask & 8;
        needs.rows           = mask & 1;
        const StatsOptions o = stats_options(needs, 2048, 4096);
        EXPECT_EQ(o.rows, needs.rows) << "mask " << mask;
        EXPECT_EQ(o.xtx, needs.xtx) << "mask " << mask;
        EXPECT_EQ(o.abs_mean, needs.abs_mean) << "mask " << mask;
        EXPECT_EQ(o.max_samples, needs.samples ? 2048 : 0) << "mask " << mask;
        EXPECT_EQ(o.total_rows, 4096) << "mask " << mask;
    }
}

TEST(StatsOptions, EveryQuantizerGetsTheInputsItNeeds) {
    const auto xs = chunks();
    for (const auto& q : quant::quantizers()) {
        StatsCollector s(stats_options(q.needs, 7, 36));
        for (const auto& x : xs) s.observe(0, LinearInput::Mlp, x);
        const quant::InputStats in = s.input(0, LinearInput::Mlp);
        EXPECT_EQ(in.xtx.defined(), q.needs.xtx) << io::name(q.method);
        EXPECT_EQ(in.abs_mean.defined(), q.needs.abs_mean) << io::name(q.method);
        EXPECT_EQ(in.samples.defined(), q.needs.samples) << io::name(q.method);
    }
}

// stories260k, whole model on one process; N = 3 sequences of T = 32 tokens.
struct Stories {
    io::HfCheckpoint ckpt{test::shared_path("models/stories260k")};
    at::Tensor       tok =
        io::load_token_dataset(test::shared_path("models/stories260k/calib-tokens.safetensors"), 3)
            .tokens.narrow(1, 0, 32)
            .contiguous();  // int64 [3, 32]
    model::Stage stage() const {
        return model::Stage(
            ckpt.config(),
            model::load_stage_weights(ckpt, model::whole_model(ckpt.config()), at::kFloat),
            tok.size(1));
    }
};

TEST(FisherDiagonal, SumOfSquaredPerSequenceGradients) {
    Stories su;
    ASSERT_EQ(su.tok.size(0), 3);
    model::Stage              lib = su.stage();
    test::SoloTransport       solo;
    const model::StageTensors fisher = fisher_diagonal(lib, solo, su.tok, 1);

    // Reference: one backward per sequence of that sequence's mean loss, squared and summed.
    model::Stage ref = su.stage();
    model::enable_linear_grads(ref.weights());
    const std::size_t   n_layer = ref.weights().layers.size();
    model::StageTensors want(n_layer);
    for (int64_t s = 0; s < su.tok.size(0); ++s) {
        const at::Tensor tok_s = su.tok.narrow(0, s, 1);  // int64 [1, T]
        ref.forward(tok_s, tok_s).mean().backward();
        for (std::size_t il = 0; il < n_layer; ++il)
            for (std::size_t i = 0; i < model::kNumLinears; ++i) {
                at::Tensor& w = ref.weights().layers[il].linear(model::kLinears[i]);
                ASSERT_TRUE(w.grad().defined()) << "layer " << il << " linear " << i;
                const at::Tensor g2 = w.grad().to(at::kDouble).square();
                want[il][i]         = want[il][i].defined() ? want[il][i] + g2 : g2;
                w.mutable_grad()    = at::Tensor();
            }
    }

    ASSERT_EQ(fisher.size(), n_layer);
    for (std::size_t il = 0; il < n_layer; ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const model::Linear l    = model::kLinears[i];
            const std::string   what = "layer " + std::to_string(il) + " " + model::linear_name(l);
            const at::Tensor&   f    = fisher[il][i];
            ASSERT_TRUE(f.defined()) << what;
            EXPECT_EQ(f.scalar_type(), at::kFloat) << what;
            ASSERT_EQ(f.sizes(), lib.weights().layers[il].linear(l).sizes()) << what;
            EXPECT_GT(want[il][i].abs().max().item<double>(), 0.0) << what;
            if (il == 0 && (l == model::Linear::Q || l == model::Linear::Down))
                print_compare("fisher " + what, f, want[il][i]);
            EXPECT_LE(rel_diff(f, want[il][i]), kFisherRel) << what;
        }
    // The library leaves the stage's weights as plain tensors again.
    for (const auto& lw : lib.weights().layers)
        for (model::Linear l : model::kLinears) EXPECT_FALSE(lw.linear(l).requires_grad());
}

TEST(CollectForwardStats, EqualsObservingAPlainForward) {
    Stories       su;
    const int64_t N = su.tok.size(0), T = su.tok.size(1);
    StatsOptions  o;
    o.xtx         = true;
    o.abs_mean    = true;
    o.max_samples = 10;
    o.total_rows  = N * T;

    model::Stage        st = su.stage();
    test::SoloTransport solo;
    StatsCollector      got(o);
    collect_forward_stats(st, solo, su.tok, 2, got);  // microbatches of 2 and 1 sequences

    StatsCollector want(o);
    {
        at::NoGradGuard no_grad;
        st.set_observer(&want);
        st.forward(su.tok, su.tok);
        st.set_observer(nullptr);
    }

    const LinearInput inputs[] = {LinearInput::Attn, LinearInput::AttnOut, LinearInput::Mlp,
                                  LinearInput::MlpOut};
    for (int64_t il = 0; il < su.ckpt.config().n_layer; ++il)
        for (LinearInput which : inputs) {
            const std::string what =
                "layer " + std::to_string(il) + " input " + std::to_string(int(which));
            if (il == 0 && which == LinearInput::Attn)
                print_compare("xtx " + what, got.xtx(il, which), want.xtx(il, which));
            EXPECT_LE(rel_diff(got.xtx(il, which), want.xtx(il, which)), kForwardRel) << what;
            EXPECT_LE(rel_diff(got.abs_mean(il, which), want.abs_mean(il, which)), kForwardRel)
                << what;
            const at::Tensor gs = got.samples(il, which), ws = want.samples(il, which);
            ASSERT_EQ(gs.sizes(), ws.sizes()) << what;
            EXPECT_LE(rel_diff(gs, ws), kForwardRel) << what;
        }

    // The collector is detached afterwards: another forward adds nothing to it.
    const at::Tensor before = got.xtx(0, LinearInput::Attn).clone();
    {
        at::NoGradGuard no_grad;
        st.forward(su.tok, su.tok);
    }
    EXPECT_TRUE(at::equal(got.xtx(0, LinearInput::Attn), before));
}

}  // namespace
}  // namespace rq::sensitivity
