#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "requant/io/job.h"

// `requant-dist run JOB.toml`: the quantization pipeline across the ranks of MPI_COMM_WORLD.
// Phases (DESIGN.md §3): prepare (rank 0 fingerprints model, data and job, tokenizes the
// calibration and eval data, broadcasts it), baseline (full-precision perplexity), quantize
// (statistics, Alg. 1 outliers, the base quantizer; each rank its own layers), detach (Alg. 2,
// round by round), evaluate, assemble (rank 0 gathers the layer files into
// OUT/model.requant.h5), results (OUT/results.json, OUT/job.toml).
// Resumable (store/state.h): each phase is recorded in OUT/run.h5 once every rank has
// written its files; a rerun on the same OUT skips what is recorded, reuses every sound layer
// and detach-round file, and gives the same bytes whatever the rank count. `restart` removes
// the old state first. A folder made for another model, data or job is refused.
// Every rank calls it; results do not depend on the number of ranks.

namespace rq::phases {

struct RunFlags {
    // The `sensitivity` command: the study between w and the quantized w~ on the calibration
    // set after the run (phases/study.h): results.json "sensitivity".
    bool                 with_study = false;
    bool                 restart    = false;  // remove the run's old state first
    std::vector<int64_t> dump_layers;         // layers written to OUT/dump/ (store/dump.h)
};

// Returns 0; throws rq::Error on failure (the caller aborts the job).
int run_job(const io::Job& job, const RunFlags& flags);

}  // namespace rq::phases
