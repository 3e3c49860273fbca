#pragma once
#include <string>

#include "requant/io/job.h"

// `requant-dist run JOB.toml`: the quantization pipeline across the ranks of MPI_COMM_WORLD.
// Phases (DESIGN.md §3): prepare (rank 0 tokenizes calibration and eval data, broadcasts it),
// baseline (perplexity of the full-precision model on each eval set), statistics + prequant
// (base quantizer on every linear of every layer, each rank on its own layers), evaluate
// (perplexity of the quantized model), results (OUT/results.json and OUT/job.toml, rank 0).
// Every rank calls it; results do not depend on the number of ranks.

namespace rq::pipeline {

// Returns 0; throws rq::Error on failure (the caller aborts the job). with_pqi (the
// `sensitivity` command) adds the PQI between w and the quantized w~ on the calibration set
// (sensitivity.nodes, sensitivity.rule) and its self-test: results.json "sensitivity".
int run_job(const io::Job& job, bool with_pqi = false);

}  // namespace rq::pipeline
