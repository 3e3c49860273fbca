// PQI under mpirun: the self-test sum_i PQI_i ~ F(w~) - F(w) on stories260k with 4-bit RTN, the
// error shrinking with N, and every rank's per-weight PQI bitwise equal to the one-rank run.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include "../common/shared_dir.h"
#include "requant/error.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/parallel/partition.h"
#include "requant/quant/rtn.h"
#include "requant/sensitivity/pqi.h"

namespace rq::sensitivity {
namespace {

constexpr double kSelfTestRel = 0.01;  // |sum PQI - dF| / |dF| at N = 32 (issue 5)

struct PqiRun {
    PqiResult r;
    double    rel_err() const { return std::abs(r.pqi_sum - r.delta_f()) / std::abs(r.delta_f()); }
};

PqiRun pqi_run(parallel::Transport& t, const model::StageRange& range, const at::Tensor& tok,
               io::PqiRule rule, int n) {
    io::HfCheckpoint ckpt(test::shared_path("models/stories260k"));
    model::Stage s(ckpt.config(), model::load_stage_weights(ckpt, range, at::kFloat), tok.size(1));
    model::StageTensors wq(s.weights().layers.size());
    for (std::size_t il = 0; il < wq.size(); ++il)
        for (std::size_t i = 0; i < model::kLinears.size(); ++i)
            wq[il][i] = quant::dequantize(
                quant::rtn_quantize(s.weights().layers[il].linear(model::kLinears[i]), {4, 64}));
    return {compute_pqi(s, t, wq, tok, 2, PqiOptions{quadrature(rule, n), {}})};
}

TEST(Pqi, SelfTestAndRankIndependence) {
    auto world = parallel::make_mpi_transport();
    auto self  = parallel::make_mpi_transport(true);
    // 4 sequences of 128 tokens: 72 forward+backward passes per rank stay within seconds.
    at::Tensor tok =
        io::load_token_dataset(test::shared_path("models/stories260k/calib-tokens.safetensors"), 4)
            .tokens.narrow(1, 0, 128)
            .contiguous();
    io::HfCheckpoint ckpt(test::shared_path("models/stories260k"));
    const auto       plan = parallel::plan_pipeline(ckpt.config(), world->size(), tok.size(1));
    const auto&      mine = plan.stages[std::size_t(world->rank())].range;

    const PqiRun dist32 = pqi_run(*world, mine, tok, io::PqiRule::Midpoint, 32);
    const PqiRun ref32 =
        pqi_run(*self, model::whole_model(ckpt.config()), tok, io::PqiRule::Midpoint, 32);
    const PqiRun dist8 = pqi_run(*world, mine, tok, io::PqiRule::Midpoint, 8);
    if (world->rank() == 0)
        std::printf("dF %.6e  sum PQI N=8 %.6e (rel %.2e)  N=32 %.6e (rel %.2e)\n",
                    dist32.r.delta_f(), dist8.r.pqi_sum, dist8.rel_err(), dist32.r.pqi_sum,
                    dist32.rel_err());
    EXPECT_LE(dist32.rel_err(), kSelfTestRel);
    EXPECT_LE(dist32.rel_err(), dist8.rel_err()) << "the error shrinks as N grows";
    EXPECT_EQ(dist32.r.f_orig, ref32.r.f_orig);
    EXPECT_EQ(dist32.r.f_quant, ref32.r.f_quant);
    EXPECT_NEAR(dist32.r.pqi_sum, ref32.r.pqi_sum, 1e-12 * std::abs(ref32.r.pqi_sum));
    // Left rule with one interval = the gradient at w only: exactly the first-order term.
    const PqiRun left1 = pqi_run(*world, mine, tok, io::PqiRule::Left, 1);
    EXPECT_NEAR(left1.r.pqi_sum, dist32.r.first_order, 1e-9 * std::abs(left1.r.pqi_sum));
    EXPECT_EQ(left1.r.first_order, dist32.r.first_order);
    if (world->rank() == 0)
        std::printf("first-order term %.6e vs dF %.6e\n", dist32.r.first_order, dist32.r.delta_f());
    int mismatches = 0;
    for (std::size_t il = 0; il < dist32.r.pqi.size(); ++il)
        for (std::size_t i = 0; i < model::kLinears.size(); ++i)
            mismatches +=
                !at::equal(dist32.r.pqi[il][i], ref32.r.pqi[std::size_t(mine.layer_begin) + il][i]);
    int all = 0;
    MPI_Allreduce(&mismatches, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    EXPECT_EQ(all, 0) << "per-weight PQI differs from the one-rank run";
}

TEST(Pqi, QuadratureRules) {
    for (io::PqiRule rule : io::kPqiRules) {
        const Quadrature q = quadrature(rule, 4);
        double           s = 0;
        for (double w : q.weight) s += w;
        EXPECT_NEAR(s, 1.0, 1e-15) << io::name(rule);
        for (double t : q.t) EXPECT_TRUE(t >= 0 && t <= 1) << io::name(rule);
    }
    EXPECT_EQ(quadrature(io::PqiRule::Trapezoid, 4).t.size(), 5u);
    EXPECT_DOUBLE_EQ(quadrature(io::PqiRule::Midpoint, 4).t[0], 0.125);
    EXPECT_THROW(quadrature(io::PqiRule::Midpoint, 0), ConfigError);
}

}  // namespace
}  // namespace rq::sensitivity
