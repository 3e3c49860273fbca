#pragma once
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "requant/dist/transport.h"
#include "requant/io/job.h"
#include "requant/model/llama.h"
#include "requant/pipeline/calibrate.h"
#include "requant/sensitivity/path.h"

// ReQuant's two phases across the ranks (DESIGN.md §3, PAPER.md §4.3-§4.4):
// - phase 4, Alg. 1, self-adaptive outliers: each rank pre-quantizes each of its linears with
//   the top-r |w| taken out, for every candidate ratio r (multiples of requant.outlier_ratio),
//   and scores it with the base method's own objective (RTN: sum dW^2; GPTQ: tr(dW H dW^T),
//   H = X^T X; AWQ: |dW X^T|^2 on its sampled inputs; SqueezeLLM: sum F dW^2, F the Fisher
//   diagonal); rank 0 gathers the [L*7, R] tables, solves the global budget
//   (requant/budget.h) and broadcasts the ratios; each rank builds its masks. A candidate is
//   scored with all 7 linears of the layer at the same ratio and the linears are budgeted as
//   independent; for AWQ, whose q/k/v and gate/up share one input scale, that is an
//   approximation (the mixed choice is not re-scored).
// - phase 5, Alg. 2, step-wise significant-weight detach: K = ceil(r_s / beta) rounds of beta
//   (the last takes what is left of r_s), each the PQI
//   of every weight between w and the current w~ (sensitivity.nodes, sensitivity.rule), the
//   top beta (scope global or per linear, signed or |PQI|) among weights not yet sparse, and
//   their original values restored; the dense codes are not refitted.

namespace rq::pipeline {

// Alg. 1: outlier masks for this rank's layers. Collective. `report` gets "outlier_selection":
// the budget, the candidates, and per (layer, linear) the chosen ratio, count and objective
// without and with outliers.
SparseMasks adaptive_outliers(model::Stage& stage, dist::Transport& t, const at::Tensor& tokens,
                              int64_t microbatch, const QuantSpec& spec,
                              const std::vector<std::array<at::Tensor, 7>>* fisher,
                              nlohmann::json&                               report);

// Resume of Alg. 2: the rounds an earlier run finished (their picks per layer of this rank and
// their report entries), and a callback after each new round (collective: every rank calls it
// with its own layers' picks).
struct DetachResume {
    int                                    rounds_done = 0;
    std::vector<std::array<at::Tensor, 7>> picked;  // union of the finished rounds' picks
    nlohmann::json                         rounds = nlohmann::json::array();
    std::function<void(int round, const std::vector<std::array<at::Tensor, 7>>& pick,
                       const nlohmann::json& rounds)>
        on_round;
};

// Alg. 2 (significant_select = pqi), or the same number of weights at random (= random) in
// one round. `stage` holds W_hat = dense + outliers on entry and the final W_hat on return;
// w_orig is this rank's w; q gains the significant CSR parts (W - dequant(dense) on the
// selected weights). `report` gets "detach": per round the PQI self-test and the selection.
void detach_significant(model::Stage& stage, dist::Transport& t,
                        const sensitivity::LinearSet& w_orig, std::vector<LayerQuant>& q,
                        const at::Tensor& tokens, int64_t microbatch, const QuantSpec& spec,
                        const io::JobSensitivity& pqi, nlohmann::json& report,
                        DetachResume resume = {});

}  // namespace rq::pipeline
