#pragma once
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "requant/decompose/layer.h"
#include "requant/decompose/outliers.h"
#include "requant/phases/context.h"
#include "requant/quant/decomposed.h"
#include "requant/sensitivity/stats.h"

// The phases of `requant-dist run` (DESIGN.md §3), each one function over the RunContext with
// typed inputs and a typed result. A phase that records a marker in run.h5 (prepare, baseline,
// quantize, detach-K, detach, evaluate, assemble) is skipped or resumed from its files when the
// run directory already holds it. run_job (phases/run.h) sequences them.

namespace rq::phases {

// prepare: the run directory, the fingerprint, the tokenized data (read from run.h5 or
// tokenized by rank 0 and recorded), broadcast to every rank; this rank's stage.
void prepare(RunContext& ctx);

// baseline / evaluate: perplexity of the stage's model on every eval set and the calibration
// set (marker "baseline" with the fp32 model, "evaluate" with the quantized one).
store::Perplexities baseline(RunContext& ctx);
store::Perplexities evaluate(RunContext& ctx);

// statistics: what the base method and Alg. 1 need from the full-precision model, collected
// once and shared: X^T X / mean |x| / sampled rows in one forward pass, the Fisher diagonal in
// forward+backward passes. Sequential GPTQ takes its own layer-by-layer statistics in quantize.
struct Statistics {
    sensitivity::StatsCollector forward;  // empty unless `has_forward`
    bool                        has_forward = false;
    int64_t passes = 1;  // > 1: `forward` is collected in quantize, a group of layers per pass
    model::StageTensors fisher;  // empty unless the method or the job needs it
    double              seconds = 0;
};
Statistics statistics(RunContext& ctx);

// outliers: the sparse masks chosen before the dense fit (Alg. 1, the fixed rule, random;
// Fisher significant weights). `report` gets Alg. 1's "outlier_selection".
decompose::SparseSelection outliers(RunContext& ctx, const Statistics& stats,
                                    nlohmann::json& report);

// quantize: every layer of this rank's stage decomposed, its file written; layers an earlier
// run finished are reused. The stage holds W_hat on return.
std::vector<decompose::LayerQuant> quantize(RunContext& ctx, Statistics& stats,
                                            const decompose::SparseSelection& sel);

// The layers of a finished quantize phase read back from their files (nullopt on any rank
// where one is missing or damaged: then every rank redoes the phase).
std::optional<std::vector<decompose::LayerQuant>> reuse_quantized(RunContext& ctx);

// detach: Alg. 2's rounds (markers detach-1..K, then detach), resumed round by round; q gains
// the significant parts and the stage holds the final W_hat.
void detach(RunContext& ctx, const model::StageTensors& w_orig,
            std::vector<decompose::LayerQuant>& q);

// The storage of every rank's layers, summed (collective).
quant::StorageBits total_storage(RunContext& ctx, const std::vector<decompose::LayerQuant>& q);

// assemble: the final checkpoint from the layer files (rank 0).
void assemble(RunContext& ctx, const quant::StorageBits& all);

// Per linear of the model, in layer then kLinears order: shape, bits of each part, sparse
// counts and the quantize-time errors (from the layer files), gathered from the ranks that own
// the layers (collective; every rank gets the array). No checkpoint is read back.
nlohmann::json linear_table(RunContext& ctx, const std::vector<decompose::LayerQuant>& q);

// results.json (with `linears`, the table above), job.toml and OUT/report/ (rank 0), and the
// summary line. A report that cannot be drawn is a warning, never a lost results.json.
void write_results(RunContext& ctx, const quant::StorageBits& all, const nlohmann::json* study,
                   const nlohmann::json& linears);

}  // namespace rq::phases
