// requant-dist run JOB.toml: reads the job (rank 0 parses, every rank gets the same Job), sets
// the thread count, and runs the pipeline.
#include <spdlog/spdlog.h>

#include <filesystem>

#include "requant/cli/args.h"
#include "requant/cli/commands.h"
#include "requant/cli/sysinfo.h"
#include "requant/error.h"
#include "requant/io/hf_config.h"
#include "requant/io/job.h"
#include "requant/parallel/control.h"
#include "requant/parallel/memory_plan.h"
#include "requant/parallel/mpi_env.h"
#include "requant/phases/run.h"
#include "requant/store/checkpoint.h"

namespace rq::cli {

int run_run(const RunOptions& o) {
    const int rank = parallel::world_rank();
    io::Job   job;
    if (rank == 0) {
        job = io::load_job(o.job, o.overrides);
        // --out is a command-line path: relative to the working directory, not the job file.
        if (!o.out.empty())
            job.run.out = std::filesystem::absolute(o.out).lexically_normal().string();
    }
    parallel::broadcast_object(job, 0, rank);
    set_threads(job.run.threads);
    if (rank == 0)
        spdlog::info("job {}: {} threads per rank, {}", o.job, job.run.threads, blas_info());
    return phases::run_job(job, {o.sensitivity, o.restart, o.dump_layers});
}

int run_inspect(const InspectOptions& o) {
    if (parallel::world_rank() != 0) return 0;
    const auto s = store::inspect_checkpoint(o.file);
    std::printf("%s", o.json ? (s.dump(2) + "\n").c_str() : store::format_inspection(s).c_str());
    return 0;
}

int run_plan(const PlanOptions& o) {
    if (parallel::world_rank() != 0) return 0;
    const io::Job         job      = io::load_job(o.job, o.overrides);
    const std::string     cfg_path = o.config.empty() ? job.model.path + "/config.json" : o.config;
    const io::LlamaConfig cfg      = io::load_llama_config(cfg_path);
    const int             R        = job.run.replicas;  // every replica holds the same stages
    int                   S        = o.ranks / R;
    if (o.ranks % R != 0)
        throw ConfigError("--ranks " + std::to_string(o.ranks) + " is not a multiple of " +
                          "run.replicas = " + std::to_string(R));
    if (o.ranks == 0) {
        S = parallel::ranks_for_memory(cfg, job, o.mem_gib);
        if (S == 0)
            throw ConfigError(cfg_path + ": even one rank per layer needs more than " +
                              std::to_string(o.mem_gib) + " GiB per rank (see --ranks " +
                              std::to_string(cfg.n_layer * R) + ")");
        std::printf("%d ranks: the fewest whose every rank fits in %.0f GiB\n", S * R, o.mem_gib);
    }
    if (R > 1) std::printf("%d replicas x %d stages; each replica:\n", R, S);
    std::printf("%s: %s, %lld parameters\n%s", o.job.c_str(), cfg_path.c_str(),
                (long long)io::n_params(cfg),
                parallel::format_memory_plan(parallel::plan_memory(cfg, job, S), cfg).c_str());
    return 0;
}

int run_export(const ExportOptions& o) {
    if (parallel::world_rank() != 0) return 0;
    store::export_hf(o.from, o.out, o.dtype, parse_byte_size(o.max_shard_size));
    std::printf("exported %s to %s (%s)\n", o.from.c_str(), o.out.c_str(), o.dtype.c_str());
    return 0;
}

}  // namespace rq::cli
