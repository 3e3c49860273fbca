// requant-dist run JOB.toml: reads the job (rank 0 parses, every rank gets the same Job), sets
// the thread count, and runs the pipeline.
#include <spdlog/spdlog.h>

#include <filesystem>

#include "requant/cli/commands.h"
#include "requant/cli/sysinfo.h"
#include "requant/dist/control.h"
#include "requant/dist/mpi_env.h"
#include "requant/io/job.h"
#include "requant/pipeline/run.h"

namespace rq::cli {

int run_run(const RunOptions& o) {
    const int rank = dist::world_rank();
    io::Job   job;
    if (rank == 0) {
        job = io::load_job(o.job, o.overrides);
        // --out is a command-line path: relative to the working directory, not the job file.
        if (!o.out.empty())
            job.run.out = std::filesystem::absolute(o.out).lexically_normal().string();
    }
    dist::broadcast_object(job, 0, rank);
    set_threads(job.run.threads);
    if (rank == 0)
        spdlog::info("job {}: {} threads per rank, {}", o.job, job.run.threads, blas_info());
    return pipeline::run_job(job, o.sensitivity);
}

}  // namespace rq::cli
