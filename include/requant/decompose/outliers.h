#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "requant/io/job.h"
#include "requant/model/llama.h"
#include "requant/parallel/transport.h"
#include "requant/sensitivity/stats.h"

// Which weights are kept sparse before the dense part is fitted (DESIGN.md §3, PAPER.md §4.3):
// - Alg. 1, self-adaptive outliers (requant.outlier_select = adaptive): each rank pre-quantizes
//   each of its linears with the top-r |w| taken out, for every candidate ratio r (multiples of
//   requant.outlier_ratio), and scores it with the base method's own objective
//   (quant::Quantizer::objective); rank 0 gathers the [L*7, R] tables, solves the global budget
//   (decompose/budget.h) and broadcasts the ratios; each rank builds its masks. A candidate is
//   scored with all 7 linears of the layer at the same ratio and the linears are budgeted as
//   independent; for AWQ, whose q/k/v and gate/up share one input scale, that is an
//   approximation (the mixed choice is not re-scored).
// - SqueezeLLM's Dense-and-Sparse: outliers by the range rule (fixed) with one IQR multiplier
//   for every linear of the model, bisected across ranks so that outlier_ratio of all linear
//   weights are selected, and significant weights (fisher) the significant_ratio of each linear
//   with the largest Fisher diagonal.
// - random outliers (the ablation): the same count per linear at random.
// Every mask is bool [O, I] per linear of this rank's layers; the result is the same for every
// number of ranks.

namespace rq::decompose {

// Alg. 1: outlier masks for this rank's layers. Collective. `stats`: the full-precision
// statistics the base method needs (quant::Quantizer::needs), `fisher` the Fisher diagonal
// where it needs it (else null). `report` gets "outlier_selection": the budget, the candidates,
// and per (layer, linear) the chosen ratio, count and objective without and with outliers.
model::StageTensors adaptive_outliers(const model::Stage& stage, parallel::Transport& t,
                                      const io::JobQuant& quant, const io::JobRequant& requant,
                                      const sensitivity::StatsCollector& stats,
                                      const model::StageTensors* fisher, nlohmann::json& report);

struct SparseSelection {
    model::StageTensors outliers, significant;  // empty when not selected
};

// The sparse masks chosen before quantization: outliers by the fixed rule or at random, or
// `outliers` when given (Alg. 1's); significant weights by the Fisher diagonal (`fisher`,
// needed then): with the fixed rule they come first and the rule takes its outliers among the
// rest (SqueezeLLM's Dense-and-Sparse order), else they are taken among what the outliers left.
// Significant weights by PQI or at random are chosen after quantization (decompose/detach.h), not
// here. Collective over the transport (the fixed rule).
SparseSelection select_sparse(const model::Stage& stage, parallel::Transport& t,
                              const io::JobRequant& requant, const model::StageTensors* fisher,
                              const model::StageTensors* outliers = nullptr);

}  // namespace rq::decompose
