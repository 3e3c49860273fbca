// bench_pipeline: forward+backward throughput of the 1F1B pipeline under mpirun, the measured
// bubble fraction against the ideal (P-1)/(M+P-1), and peak memory per rank.
// Usage: mpirun -np P bench_pipeline --model DIR [--seqs N] [--seq-len T] [--microbatch B]
//        [--threads n] [--reps R] [--forward-only 1]
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "bench_args.h"
#include "requant/cli/sysinfo.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/tensor_cache.h"
#include "requant/parallel/control.h"
#include "requant/parallel/mpi_env.h"
#include "requant/parallel/partition.h"
#include "requant/parallel/schedule.h"
#include "requant/units.h"

int main(int argc, char** argv) {
    rq::cli::reexec_with_runtime_env(argv);  // the OpenBLAS core and environment of requant-dist
    rq::parallel::MpiEnv env(&argc, &argv);
    try {
        const rq::bench::Args a(
            argc, argv,
            {"model", "seqs", "seq-len", "microbatch", "threads", "reps", "forward-only"},
            "usage: bench_pipeline --model DIR [--seqs N] [--seq-len T] "
            "[--microbatch B] [--threads n] [--reps R] [--forward-only 1]");
        const std::string model = a.str("model");
        const int64_t     N = a.integer("seqs", 16), T = a.integer("seq-len", 256),
                      mb = a.integer("microbatch", 2), reps = a.integer("reps", 2);
        const int  threads  = int(a.integer("threads", 1));
        const bool fwd_only = a.integer("forward-only", 0) == 1;
        rq::model::install_tensor_cache(rq::model::tensor_cache_cap_from_env());  // as a run
        rq::cli::set_threads(threads);
        auto                 t = rq::parallel::make_mpi_transport();
        rq::io::HfCheckpoint ckpt(model);
        const auto           plan  = rq::parallel::plan_pipeline(ckpt.config(), t->size(), T);
        const auto&          range = plan.stages[std::size_t(t->rank())].range;
        rq::model::Stage     stage(ckpt.config(),
                                   rq::model::load_stage_weights(ckpt, range, at::kFloat), T);
        if (!fwd_only) rq::model::enable_linear_grads(stage.weights());
        at::Generator g   = at::detail::createCPUGenerator(1);
        at::Tensor    tok = at::randint(0, ckpt.config().n_vocab, {N, T}, g, at::kLong);
        rq::parallel::PipelineRunner runner(stage, *t, mb);
        auto pass = [&] { fwd_only ? runner.forward(tok) : runner.forward_backward(tok); };
        pass();  // warm-up
        double wall = 0, busy = 0;
        for (int64_t r = 0; r < reps; ++r) {
            pass();
            wall += runner.stats().wall_s;
            busy += runner.stats().busy_s;
        }
        rq::parallel::RankStatus me{
            t->rank(),       rq::parallel::host_name(),          range.layer_begin,
            range.layer_end, int64_t(rq::process_memory().peak), wall / reps,
            busy / reps};
        const auto all = rq::parallel::gather_objects(me, 0);
        if (t->rank() == 0) {
            const int64_t M    = (N + mb - 1) / mb;
            double        wmax = 0, bubble = 0;
            for (const auto& s : all)
                wmax = std::max(wmax, s.wall_s), bubble += 1 - s.busy_s / s.wall_s;
            bubble /= double(all.size());
            std::printf("  %-8s P=%d threads=%d  %6.0f tokens/s", fwd_only ? "fwd" : "fwd+bwd",
                        t->size(), threads, double(N * T) / wmax);
            std::printf("    M=%lld  bubble %.3f (ideal %.3f)  peak RSS/rank MiB:", (long long)M,
                        bubble, rq::parallel::PipelineRunner::ideal_bubble(t->size(), M));
            for (const auto& s : all) std::printf(" %.0f", s.peak_rss / 1048576.0);
            std::printf("\n");
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "[rank %d] bench_pipeline: %s\n", env.rank(), e.what());
        rq::parallel::abort_job(1);
    }
}
