// Alg. 1 (self-adaptive outliers) under mpirun on stories260k: the per-linear choice, every
// table entry and every mask equal the one-rank run bit for bit; the count stays within the
// global budget; each mask holds the largest |w| of its linear; and the chosen split has no
// larger total objective than giving every linear the same ratio, which the budget also allows.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>

#include "../common/shared_dir.h"
#include "requant/decompose/outliers.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/parallel/partition.h"
#include "requant/quant/sparse.h"
#include "requant/sensitivity/stats.h"

namespace rq::decompose {
namespace {

constexpr double kRatio = 0.01;  // 1% outliers: a few hundred per stories260k linear

struct Stories {
    io::HfCheckpoint ckpt{test::shared_path("models/stories260k")};
    at::Tensor       tok =
        io::load_token_dataset(test::shared_path("models/stories260k/calib-tokens.safetensors"), 4)
            .tokens.narrow(1, 0, 64)
            .contiguous();
    model::Stage stage(const model::StageRange& r) const {
        return model::Stage(ckpt.config(), model::load_stage_weights(ckpt, r, at::kFloat),
                            tok.size(1));
    }
};

struct Spec {
    io::JobQuant   quant;
    io::JobRequant requant;
};
Spec spec_for(io::QuantMethod method) {
    Spec s;
    s.quant.method           = method;
    s.quant.bits             = 3;
    s.quant.group_size       = 32;
    s.requant.outlier_ratio  = kRatio;
    s.requant.outlier_select = io::OutlierSelect::Adaptive;
    return s;
}

// Alg. 1 with the full-precision statistics its method needs, collected as the run does.
model::StageTensors alg1(model::Stage& stage, parallel::Transport& t, const at::Tensor& tok,
                         const Spec& sp, nlohmann::json& report) {
    const auto&                 needs = quant::quantizer(sp.quant.method).needs;
    sensitivity::StatsCollector stats(
        sensitivity::stats_options(needs, sp.quant.awq_samples, tok.size(0) * tok.size(1)));
    if (needs.forward()) sensitivity::collect_forward_stats(stage, t, tok, 2, stats);
    return adaptive_outliers(stage, t, sp.quant, sp.requant, stats, nullptr, report);
}

int64_t sum_ranks(int64_t v) {
    int64_t s = 0;
    MPI_Allreduce(&v, &s, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    return s;
}

class AdaptiveOutliers : public ::testing::TestWithParam<io::QuantMethod> {};

TEST_P(AdaptiveOutliers, RankIndependentWithinBudgetAndNoWorseThanUniform) {
    auto        world = parallel::make_mpi_transport();
    auto        self  = parallel::make_mpi_transport(true);
    Stories     su;
    const auto  spec  = spec_for(GetParam());
    const auto& cfg   = su.ckpt.config();
    const auto  range = parallel::plan_pipeline(cfg, world->size(), su.tok.size(1))
                           .stages[std::size_t(world->rank())]
                           .range;
    model::Stage   part = su.stage(range), whole = su.stage(model::whole_model(cfg));
    nlohmann::json rep_d, rep_1;
    const auto     md = alg1(part, *world, su.tok, spec, rep_d);
    const auto     m1 = alg1(whole, *self, su.tok, spec, rep_1);

    // The same tables and choices, and the same masks on this rank's layers.
    EXPECT_EQ(rep_d["outlier_selection"].dump(), rep_1["outlier_selection"].dump());
    ASSERT_EQ(md.size(), std::size_t(range.layer_end - range.layer_begin));
    int64_t mine = 0;
    for (std::size_t il = 0; il < md.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const auto& a = md[il][i];
            const auto& b = m1[std::size_t(range.layer_begin) + il][i];
            ASSERT_TRUE(a.defined() && b.defined());
            EXPECT_TRUE(at::equal(a, b)) << "layer " << range.layer_begin + int64_t(il);
            mine += a.sum().item<int64_t>();
        }

    // The count is what the report says, within the budget, and uses most of it.
    const auto&   sel    = rep_1["outlier_selection"];
    const int64_t budget = sel["budget"].get<int64_t>();
    EXPECT_EQ(sum_ranks(mine), sel["count"].get<int64_t>());
    EXPECT_LE(sel["count"].get<int64_t>(), budget);
    EXPECT_GE(sel["count"].get<int64_t>(), budget - budget / 50);

    // Each mask is the top-|w| of its linear, with the chosen count.
    double chosen_obj = 0, uniform_obj = 0;
    for (const auto& p : sel["per_linear"]) {
        const auto  l = p["layer"].get<std::size_t>();
        std::size_t i = 0;
        while (model::linear_name(model::kLinears[i]) != p["linear"].get<std::string>()) ++i;
        const at::Tensor w = whole.weights().layers[l].linear(model::kLinears[i]).detach();
        EXPECT_TRUE(at::equal(m1[l][i], quant::topk_mask(w.abs(), p["count"].get<int64_t>())));
        chosen_obj += p["objective"].get<double>();
    }
    // The uniform split (every linear at kRatio) scored with the same objective: one candidate
    // of the tables, so it is read back from a run with candidates {0, 1}.
    auto uniform                       = spec;
    uniform.requant.outlier_candidates = {0, 1};
    uniform.requant.outlier_ratio      = kRatio;
    nlohmann::json rep_u;
    alg1(whole, *self, su.tok, uniform, rep_u);
    for (const auto& p : rep_u["outlier_selection"]["per_linear"]) {
        EXPECT_DOUBLE_EQ(p["ratio"].get<double>(), kRatio) << "the budget fits the uniform split";
        uniform_obj += p["objective"].get<double>();
    }
    if (world->rank() == 0)
        std::printf("%s: %lld outliers of %lld, objective %.6e adaptive vs %.6e uniform\n",
                    io::name(GetParam()), (long long)sel["count"].get<int64_t>(), (long long)budget,
                    chosen_obj, uniform_obj);
    EXPECT_LE(chosen_obj, uniform_obj * (1 + 1e-12));
}

INSTANTIATE_TEST_SUITE_P(Methods, AdaptiveOutliers,
                         ::testing::Values(io::QuantMethod::Rtn, io::QuantMethod::Gptq));

}  // namespace
}  // namespace rq::decompose
