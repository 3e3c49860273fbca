// The sensitivity study under mpirun: the pipeline's central-difference Hessian terms against
// double backward in one process, every Taylor number bitwise equal to the one-rank run, the
// lambda path consistent with the Taylor terms near w, PQI's path samples reproducing every
// quadrature rule's per-weight sum, and distributed order statistics against a plain sort.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <functional>

#include "../common/shared_dir.h"
#include "requant/error.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/parallel/partition.h"
#include "requant/quant/rtn.h"
#include "requant/sensitivity/ranking.h"
#include "requant/sensitivity/taylor.h"

namespace rq::sensitivity {
namespace {

constexpr double kFdVsExactRel = 1e-5;  // central difference (eps 1e-4, fp64) vs double backward
constexpr double kTaylorNearW  = 1e-2;  // |dF - (l g + l^2 s)| / dF at lambda = 1e-3
// Sum PQI from per-weight fp32 accumulators (each node's gradient added in fp32) against the
// rule applied to phi(t) = grad . dw formed in fp64 at each node: apart only by the
// accumulators' rounding, a few 1e-9 relative here (with fp64 accumulators it was 1e-12).
constexpr double kFp32AccumRel = 1e-6;

struct Stories {
    io::HfCheckpoint ckpt{test::shared_path("models/stories260k")};
    at::Tensor       tok;
    explicit Stories(int64_t T)
        : tok(io::load_token_dataset(
                  test::shared_path("models/stories260k/calib-tokens.safetensors"), 4)
                  .tokens.narrow(1, 0, T)
                  .contiguous()) {}
    model::Stage stage(const model::StageRange& r, at::ScalarType dt) const {
        return model::Stage(ckpt.config(), model::load_stage_weights(ckpt, r, dt), tok.size(1));
    }
    model::StageRange mine(const parallel::Transport& t) const {
        return parallel::plan_pipeline(ckpt.config(), t.size(), tok.size(1))
            .stages[std::size_t(t.rank())]
            .range;
    }
};

model::StageTensors rtn4(const model::Stage& s) {
    model::StageTensors wq(s.weights().layers.size());
    for (std::size_t il = 0; il < wq.size(); ++il)
        for (std::size_t i = 0; i < model::kLinears.size(); ++i)
            wq[il][i] = quant::dequantize(quant::rtn_quantize(
                s.weights().layers[il].linear(model::kLinears[i]).to(at::kFloat), {4, 64}));
    return wq;
}

TEST(Taylor, PipelineEqualsOneRankAndDoubleBackward) {
    auto                world = parallel::make_mpi_transport();
    auto                self  = parallel::make_mpi_transport(true);
    Stories             su(64);
    const TaylorOptions opt{{1e-3, 1e-2, 1.0}, 1e-4};

    model::Stage whole  = su.stage(model::whole_model(su.ckpt.config()), at::kDouble);
    const auto   wq_all = rtn4(whole);
    const auto   ref    = taylor_study(whole, *self, wq_all, su.tok, 2, opt);
    model::Stage part   = su.stage(su.mine(*world), at::kDouble);
    const auto   dist   = taylor_study(part, *world, rtn4(part), su.tok, 2, opt);

    EXPECT_EQ(dist.f_orig, ref.f_orig);
    EXPECT_TRUE(at::equal(dist.first_order, ref.first_order));
    EXPECT_EQ(dist.layer_second, ref.layer_second);
    EXPECT_EQ(dist.second_full, ref.second_full);
    EXPECT_EQ(dist.layer_delta_f, ref.layer_delta_f);
    EXPECT_EQ(dist.delta_f, ref.delta_f);
    EXPECT_EQ(dist.lambda_delta_f, ref.lambda_delta_f);

    for (int64_t l = 0; l < su.ckpt.config().n_layer; ++l) {
        const double exact = second_order_exact(whole, wq_all, su.tok, 2, l);
        const double fd    = ref.layer_second[std::size_t(l)];
        if (world->rank() == 0)
            std::printf("layer %lld: 1/2 dw'Hdw exact %.9e  central difference %.9e\n",
                        (long long)l, exact, fd);
        EXPECT_NEAR(fd, exact, kFdVsExactRel * std::abs(exact)) << "layer " << l;
    }
    // Near w the Taylor terms must predict the actual change (lambda = 1e-3).
    const double l = opt.lambdas[0], pred = l * ref.first_total() + l * l * ref.second_full;
    EXPECT_NEAR(ref.lambda_delta_f[0], pred, kTaylorNearW * std::abs(ref.lambda_delta_f[0]));
    EXPECT_EQ(ref.lambda_delta_f.back(), ref.delta_f);
    // The stage is left at w.
    model::Stage fresh = su.stage(model::whole_model(su.ckpt.config()), at::kDouble);
    EXPECT_TRUE(at::equal(whole.weights().layers[0].wq, fresh.weights().layers[0].wq));
}

TEST(Pqi, PathSamplesReproduceEveryRule) {
    auto         world = parallel::make_mpi_transport();
    Stories      su(64);
    model::Stage s  = su.stage(su.mine(*world), at::kFloat);
    const auto   wq = rtn4(s);
    const int    N  = 4;
    PqiOptions   grid{quadrature(io::PqiRule::Midpoint, N), {}};
    for (int j = 0; j <= 2 * N; ++j) grid.study_t.push_back(double(j) / (2.0 * N));
    const PqiResult g = compute_pqi(s, *world, wq, su.tok, 2, grid);
    EXPECT_EQ(g.path.t.size(), std::size_t(2 * N + 1)) << "midpoint nodes lie on the grid";
    for (io::PqiRule rule : io::kPqiRules) {
        const PqiResult r = compute_pqi(s, *world, wq, su.tok, 2, {quadrature(rule, N), {}});
        EXPECT_NEAR(g.path.integral(rule, N), r.pqi_sum, kFp32AccumRel * std::abs(r.pqi_sum))
            << io::name(rule);
        EXPECT_EQ(g.f_orig, r.f_orig) << io::name(rule);
        EXPECT_EQ(g.f_quant, r.f_quant) << io::name(rule);
    }
    EXPECT_THROW(g.path.integral(io::PqiRule::Midpoint, 8), ConfigError);
}

// Values of layer l, the same on every rank: a few levels (ties), signed zeros, spread.
at::Tensor layer_values(int64_t l) {
    at::Tensor v = at::sin(at::arange(257 + 31 * l, at::kFloat) * (0.37 + 0.11 * double(l))) * 3.0;
    v            = at::round(v * 4) / 4;  // ties
    v[0]         = -0.0f;
    v[1]         = 0.0f;
    return v;
}

TEST(Ranking, DistributedEqualsSortedGather) {
    auto                    world = parallel::make_mpi_transport();
    const int64_t           L = 7, P = world->size(), r = world->rank();
    const int64_t           begin = r * L / P, end = (r + 1) * L / P;
    std::vector<at::Tensor> mine, all;
    for (int64_t l = 0; l < L; ++l) {
        all.push_back(layer_values(l));
        if (l >= begin && l < end) mine.push_back(all.back());
    }
    const LayerRanking rk(mine, begin, L);
    at::Tensor         sorted = std::get<0>(at::cat(all).to(at::kDouble).sort(0, true));
    const int64_t      n      = sorted.numel();
    ASSERT_EQ(rk.size(*world), n);
    int wrong = 0;
    for (int64_t k : {int64_t(1), int64_t(2), int64_t(17), n / 3, n / 2, n - 1, n}) {
        const double want = sorted[k - 1].item<double>();
        const double sum  = sorted.narrow(0, 0, k).sum().item<double>();
        wrong += rk.kth_largest(*world, k) != float(want);
        wrong += std::abs(rk.sum_largest(*world, k) - sum) > 1e-9 * (1 + std::abs(sum));
    }
    EXPECT_EQ(wrong, 0);
    EXPECT_NEAR(rk.sum_all(*world), sorted.sum().item<double>(), 1e-9);
    for (float f : {-3.5f, -0.0f, 0.0f, 1e-30f, 2.25f}) EXPECT_EQ(key_float(float_key(f)), f);
    EXPECT_LT(float_key(-0.0f), float_key(0.0f));
    EXPECT_LT(float_key(-1.0f), float_key(-0.5f));
    EXPECT_THROW(rk.kth_largest(*world, n + 1), InternalError);
}

}  // namespace
}  // namespace rq::sensitivity
