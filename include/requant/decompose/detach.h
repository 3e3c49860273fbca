#pragma once
#include <cmath>
#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "requant/decompose/layer.h"
#include "requant/io/job.h"
#include "requant/model/llama.h"
#include "requant/parallel/schedule.h"
#include "requant/parallel/transport.h"

// Alg. 2, step-wise significant-weight detach (PAPER.md §4.4): K = ceil(r_s / beta) rounds of
// beta (the last takes what is left of r_s), each the PQI of every weight between w and the
// current w~ (sensitivity.nodes, sensitivity.rule), the top beta (scope global or per linear,
// signed or |PQI|) among weights not yet sparse, and their original values restored; the dense
// codes are not refitted. significant_select = random: the same number at random, one round.

namespace rq::decompose {

// One finished round of Alg. 2: the PQI self-test between w and the w~ it started from.
struct DetachRound {
    int    round   = 0;  // 1-based
    double delta_f = 0;  // F(w~) - F(w) on the calibration set
    double pqi_sum = 0;
    double f_orig  = 0;
    double f_quant = 0;
    // Held-out stop (requant.holdout): the mean loss on the held-out sequences after the round
    // (NaN without), and whether the round was kept (a round that does not lower it is undone).
    double f_holdout = NAN;
    bool   kept      = true;
};

// Resume and progress: the rounds an earlier run finished (their picks per layer of this rank,
// and their records), a callback after each new round (collective: every rank calls it with
// its own layers' picks), and the progress of each round's PQI nodes.
struct DetachHooks {
    int                      rounds_done = 0;
    model::StageTensors      picked;  // union of the finished rounds' picks
    std::vector<DetachRound> rounds;
    std::function<void(int round, const model::StageTensors& pick,
                       const std::vector<DetachRound>& rounds)>
        on_round;
    // (round, K) -> on_node(k, total) for that round's PQI pass; may be empty.
    std::function<std::function<void(int, int)>(int round, int K)> node_progress;
    // The mean loss of the stage's current weights on held-out sequences (collective, the same
    // on every rank), or empty: no held-out stop.
    std::function<double()> holdout_loss;
};

// With hooks.holdout_loss, a round is kept only if it lowers the held-out loss; the first that
// does not is undone (its record stays, kept = false) and no further round runs.
// `stage` holds W_hat = dense + outliers on entry and the final W_hat on return; w_orig is this
// rank's w; q gains the significant CSR parts (W - dequant(dense) on the selected weights).
// `report` gets "detach": per round the PQI self-test and the selection. Collective.
void detach_significant(model::Stage& stage, parallel::Transport& t,
                        const model::StageTensors& w_orig, std::vector<LayerQuant>& q,
                        const at::Tensor& tokens, const parallel::ScheduleOptions& schedule,
                        const io::JobRequant& requant, const io::JobSensitivity& pqi,
                        nlohmann::json& report, const DetachHooks& hooks = {});

// The round records as results.json shows them ("pqi" under "detach").
nlohmann::json           rounds_json(const std::vector<DetachRound>& rounds);
std::vector<DetachRound> rounds_from_json(const nlohmann::json& j);

}  // namespace rq::decompose
