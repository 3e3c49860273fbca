// bench_pass: one 1F1B forward+backward of random tokens through a model under mpirun, every
// linear taking gradients, as a PQI node runs it: the time and, per rank, the RSS at start-up
// and the peak RSS (VmHWM, file pages included). Long sequences show what blocked attention
// and the chunked loss keep out of memory. Run through launch/bench-1b.sh.
// Usage: mpirun -np P bench_pass --model DIR [--seqs N] [--seq-len T] [--microbatch B]
//        [--threads n]
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <string>

#include "bench_args.h"
#include "requant/cli/sysinfo.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/parallel/control.h"
#include "requant/parallel/mpi_env.h"
#include "requant/parallel/partition.h"
#include "requant/parallel/schedule.h"
#include "requant/units.h"

int main(int argc, char** argv) {
    rq::cli::reexec_with_runtime_env(argv);  // the OpenBLAS core and environment of requant-dist
    rq::parallel::MpiEnv env(&argc, &argv);
    try {
        const double          start_rss = rq::process_memory().rss;
        const rq::bench::Args a(argc, argv, {"model", "seqs", "seq-len", "microbatch", "threads"},
                                "usage: bench_pass --model DIR [--seqs N] [--seq-len T] "
                                "[--microbatch B] [--threads n]");
        const int64_t         N = a.integer("seqs", 1), T = a.integer("seq-len", 4096),
                      mb = a.integer("microbatch", 1);
        rq::cli::set_threads(int(a.integer("threads", 1)));
        auto                 t = rq::parallel::make_mpi_transport();
        rq::io::HfCheckpoint ckpt(a.str("model"));
        const auto&          c     = ckpt.config();
        const auto           plan  = rq::parallel::plan_pipeline(c, t->size(), T);
        const auto&          range = plan.stages[std::size_t(t->rank())].range;
        rq::model::Stage     stage(c, rq::model::load_stage_weights(ckpt, range, at::kFloat), T);
        rq::model::enable_linear_grads(stage.weights());
        at::Generator g          = at::detail::createCPUGenerator(1);
        at::Tensor    tok        = at::randint(0, c.n_vocab, {N, T}, g, at::kLong);
        const double  loaded_rss = rq::process_memory().rss;
        t->barrier()->wait();

        const auto                   t0 = rq::Clock::now();
        rq::parallel::PipelineRunner runner(stage, *t, mb);
        const double                 loss = runner.forward_backward(tok).mean();
        const double                 wall = rq::since(t0);
        const double                 peak = rq::process_memory().peak;
        // Per rank: start-up RSS, RSS with the stage loaded, peak (GiB).
        at::Tensor mem    = at::zeros({t->size(), 3}, at::kDouble);
        mem[t->rank()][0] = start_rss / rq::kGiB;
        mem[t->rank()][1] = loaded_rss / rq::kGiB;
        mem[t->rank()][2] = peak / rq::kGiB;
        t->allreduce_sum(mem)->wait();
        if (t->rank() == 0) {
            std::printf(
                "  pass P=%d %lldx%lld tokens, microbatch %lld: loss %.6f, %.1f s, %.1f "
                "tokens/s\n",
                t->size(), (long long)N, (long long)T, (long long)mb, loss, wall,
                double(N * T) / wall);
            for (int r = 0; r < t->size(); ++r)
                std::printf(
                    "    rank %d: RSS at start-up %.2f GiB, loaded %.2f GiB, peak %.2f "
                    "GiB (%.2f above start-up)\n",
                    r, mem[r][0].item<double>(), mem[r][1].item<double>(), mem[r][2].item<double>(),
                    mem[r][2].item<double>() - mem[r][0].item<double>());
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "[rank %d] bench_pass: %s\n", env.rank(), e.what());
        rq::parallel::abort_job(1);
    }
}
