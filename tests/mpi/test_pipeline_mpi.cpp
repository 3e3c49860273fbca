// The pipeline under real mpirun: transports, control plane, and the schedules' results equal
// to the single-process run (a one-rank pipeline on MPI_COMM_SELF in the same process) bit for
// bit: loss, and every weight gradient of every stage.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include "../common/shared_dir.h"
#include "requant/error.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/parallel/control.h"
#include "requant/parallel/partition.h"
#include "requant/parallel/schedule.h"
#include "requant/parallel/transport.h"

namespace rq::parallel {
namespace {

constexpr double kMaxRel = 1e-5;  // the bound; we also require bitwise equality

// Each rank's verdict must be everyone's: a failure on rank 2 fails the test on rank 0 too.
void expect_all_ranks(bool ok, const std::string& what) {
    int mine = ok ? 1 : 0, all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    EXPECT_EQ(all, 1) << what << " failed on at least one rank";
}

TEST(Transport, RingSendRecvCarriesRankDerivedValues) {
    auto       t = make_mpi_transport();
    const int  r = t->rank(), P = t->size();
    at::Tensor out = at::ones({16, 16}) * r, in = at::empty({16, 16});
    auto       s = t->send(out, (r + 1) % P, 7);
    t->recv(in, (r + P - 1) % P, 7)->wait();
    s->wait();
    expect_all_ranks(at::equal(in, at::ones({16, 16}) * ((r + P - 1) % P)), "ring");
}

TEST(Transport, BroadcastAndDeterministicAllreduce) {
    auto       t = make_mpi_transport();
    at::Tensor b =
        t->rank() == 1 % t->size() ? at::arange(10, at::kDouble) : at::zeros({10}, at::kDouble);
    t->broadcast(b, 1 % t->size())->wait();
    expect_all_ranks(at::equal(b, at::arange(10, at::kDouble)), "broadcast");
    at::Tensor a = at::full({5}, 0.1 * (t->rank() + 1), at::kDouble);
    t->allreduce_sum(a)->wait();
    double want = 0;
    for (int r = 0; r < t->size(); ++r) want += 0.1 * (r + 1);  // rank order, as documented
    expect_all_ranks(a[0].item<double>() == want, "allreduce_sum in rank order");
}

TEST(Control, BroadcastAndGatherObjects) {
    auto       t = make_mpi_transport();
    RankStatus s{
        t->rank(), "h" + std::to_string(t->rank()), t->rank(), t->rank() + 1, 42, 1.5, 0.5, 9, 7};
    const auto all = gather_objects(s, 0);
    if (t->rank() == 0) {
        ASSERT_EQ(int(all.size()), t->size());
        for (int r = 0; r < t->size(); ++r) {
            EXPECT_EQ(all[r].host, "h" + std::to_string(r));
            EXPECT_EQ(all[r].n_tensors, 9);
        }
    }
    std::vector<int64_t> v;
    if (t->rank() == 0) v = {3, 1, 4, 1, 5};
    broadcast_object(v, 0, t->rank());
    expect_all_ranks(v == std::vector<int64_t>({3, 1, 4, 1, 5}), "broadcast_object");
}

struct Result {
    double                  loss = 0;
    std::vector<at::Tensor> grads;  // this stage's linears, layer-major
};

Result run(const io::HfCheckpoint& ckpt, Transport& t, const model::StageRange& range,
           const at::Tensor& tok, ScheduleOptions schedule, bool backward) {
    model::Stage s(ckpt.config(), model::load_stage_weights(ckpt, range, at::kFloat), tok.size(1));
    model::enable_linear_grads(s.weights());
    PipelineRunner runner(s, t, schedule);
    Result         res;
    res.loss = backward ? runner.forward_backward(tok).mean() : runner.forward(tok).mean();
    if (backward)
        for (auto& lw : s.weights().layers)
            for (model::Linear l : model::kLinears) res.grads.push_back(lw.linear(l).grad());
    return res;
}

void check_against_single_process(const std::string& model, const std::string& data, int64_t n_seqs,
                                  int64_t microbatch) {
    io::HfCheckpoint ckpt(test::shared_path("models/" + model));
    at::Tensor       tok   = io::load_token_dataset(test::shared_path(data), n_seqs).tokens;
    auto             world = make_mpi_transport();
    auto             self  = make_mpi_transport(/*self_only=*/true);
    if (world->size() > ckpt.config().n_layer) {  // more ranks than layers: a clear refusal
        EXPECT_THROW(plan_pipeline(ckpt.config(), world->size(), tok.size(1)), ConfigError);
        return;
    }
    const auto  plan = plan_pipeline(ckpt.config(), world->size(), tok.size(1));
    const auto& mine = plan.stages[std::size_t(world->rank())].range;

    // Single-process reference: the whole model as one stage, same microbatches, same threads.
    const Result ref   = run(ckpt, *self, model::whole_model(ckpt.config()), tok, microbatch, true);
    const Result pipe  = run(ckpt, *world, mine, tok, microbatch, true);
    const Result pipe2 = run(ckpt, *world, mine, tok, microbatch, true);  // same on every run
    const Result fwd   = run(ckpt, *world, mine, tok, microbatch, false);
    // In-flight caps below 1F1B's P - r: a longer bubble, the same bits.
    const Result cap1 = run(ckpt, *world, mine, tok, {microbatch, 1}, true);
    const Result cap2 = run(ckpt, *world, mine, tok, {microbatch, 2}, true);
    // Each layer's graph kept from forward to backward instead of recomputed: the same bits.
    ScheduleOptions kept(microbatch), kept_cap(microbatch, 1);
    kept.keep_graph = kept_cap.keep_graph = true;
    const Result keep                     = run(ckpt, *world, mine, tok, kept, true);
    const Result keep1                    = run(ckpt, *world, mine, tok, kept_cap, true);

    bool bitwise = pipe.loss == ref.loss && fwd.loss == ref.loss && pipe2.loss == pipe.loss &&
                   cap1.loss == ref.loss && cap2.loss == ref.loss && keep.loss == ref.loss &&
                   keep1.loss == ref.loss;
    double            max_rel = std::abs(pipe.loss - ref.loss) / std::abs(ref.loss);
    const std::size_t off     = std::size_t(mine.layer_begin) * model::kLinears.size();
    for (std::size_t i = 0; i < pipe.grads.size(); ++i) {
        const at::Tensor& want = ref.grads[off + i];
        const double rel = ((pipe.grads[i] - want).abs().max() / want.abs().max()).item<double>();
        max_rel          = std::max(max_rel, rel);
        bitwise = bitwise && at::equal(pipe.grads[i], want) && at::equal(pipe2.grads[i], want) &&
                  at::equal(cap1.grads[i], want) && at::equal(cap2.grads[i], want) &&
                  at::equal(keep.grads[i], want) && at::equal(keep1.grads[i], want);
    }
    std::printf(
        "[rank %d] %s: layers [%lld,%lld) loss %.9f (P=1 %.9f), %zu gradients, "
        "max rel diff %.3g, bitwise %s\n",
        world->rank(), model.c_str(), (long long)mine.layer_begin, (long long)mine.layer_end,
        pipe.loss, ref.loss, pipe.grads.size(), max_rel, bitwise ? "yes" : "no");
    expect_all_ranks(max_rel <= kMaxRel, model + ": max relative difference <= 1e-5");
    expect_all_ranks(bitwise, model +
                                  ": bitwise equal to P = 1, across runs, in-flight caps "
                                  "and with kept graphs");
}

TEST(Pipeline, Stories260kEqualsSingleProcess) {
    check_against_single_process("stories260k", "models/stories260k/calib-tokens.safetensors", 8,
                                 2);
}

TEST(Pipeline, Llama7mEqualsSingleProcess) {
    check_against_single_process("llama-7m-en", "models/llama-7m-en/reference.safetensors", 4, 1);
}

TEST(Pipeline, Llama3TinyRandomEqualsSingleProcess) {
    check_against_single_process("llama3-tiny-random",
                                 "models/llama3-tiny-random/reference.safetensors", 4, 2);
}

}  // namespace
}  // namespace rq::parallel
