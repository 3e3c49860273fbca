#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/io/job.h"
#include "requant/model/llama.h"
#include "requant/parallel/schedule.h"
#include "requant/parallel/transport.h"
#include "requant/sensitivity/path.h"

// The Post-quantization Integral (Hu et al., 2025) across the pipeline:
//   PQI_i = (w~_i - w_i) * integral_0^1 dF/dw_i (w + t (w~ - w)) dt,
// with every linear of every layer moving along the straight path together, so each quadrature
// node is one full-model forward+backward (1F1B) over the calibration set, the same sequences at
// every node. sum_i PQI_i ~ F(w~) - F(w): the self-test. Each rank holds gradient accumulators
// for its own layers only. L n_layer (whole model), O out_features, I in_features.

namespace rq::sensitivity {

struct Quadrature {
    std::vector<double> t;       // nodes in [0, 1], ascending
    std::vector<double> weight;  // sum to 1
};
// The rule with n intervals (trapezoid: n + 1 nodes).
// Node k of every rule is computed as an exact ratio of integers, so the nodes of different
// rules that denote the same point compare equal (midpoint (2k+1)/(2n) is on the grid j/(2n)).
Quadrature quadrature(io::PqiRule rule, int n);

// phi(t) = dF/dt along the path = grad F(w + t dw) . dw, sampled at ascending nodes t.
struct PathSamples {
    std::vector<double> t, phi, f;  // f: F at each node
    // The rule's estimate of integral_0^1 phi with n intervals, from the samples; throws
    // ConfigError when a node the rule needs was not sampled.
    double integral(io::PqiRule rule, int n) const;
};

struct PqiOptions {
    Quadrature quad;  // the rule whose nodes accumulate per-weight PQI
    // Extra nodes where only phi(t) and F(t) are recorded (the convergence study), e.g. the grid
    // j/(2N), j = 0..2N, on which every rule with N or fewer intervals (N divisible) can be
    // evaluated. Nodes of `quad` are never visited twice.
    std::vector<double> study_t;
};

struct PqiResult {
    model::StageTensors pqi;        // float [O, I] per linear of this rank's layers
    at::Tensor          layer_pqi;  // double [L, 7]: sum of PQI per linear, every layer, every rank
    double              pqi_sum = 0;  // sum of layer_pqi in layer order: the same for every P
    double              f_orig  = 0;  // F(w) on the calibration tokens
    double              f_quant = 0;  // F(w~)
    double      first_order = 0;  // g^T (w~ - w), g = grad F(w): the first-order Taylor estimate
    PathSamples path;             // phi and F at every visited node (quadrature and study)
    double      delta_f() const { return f_quant - f_orig; }
};

// `stage` holds w on entry and on return. w_quant: this rank's w~ (same shapes as the stage's
// linears). Collective: every rank calls it with its own stage. on_node(k, total) before the
// first node (k = 0) and after each. Every value in the result is bitwise the same for every number
// of ranks.
PqiResult compute_pqi(model::Stage& stage, parallel::Transport& t,
                      const model::StageTensors& w_quant, const at::Tensor& tokens,
                      const parallel::ScheduleOptions& schedule, const PqiOptions& opt,
                      const std::function<void(int, int)>& on_node = {});
// As above with w given (borrowed, any floating dtype: e.g. views of the checkpoint) instead of
// read from the stage, and w~ made per linear when needed: no copy of w or w~ is held
// (LinearPath). The stage's linears are replaced, not written to; they hold w on return.
PqiResult compute_pqi(model::Stage& stage, parallel::Transport& t,
                      const model::StageTensors& w_orig, const LinearPath::Source& w_quant,
                      const at::Tensor& tokens, const parallel::ScheduleOptions& schedule,
                      const PqiOptions& opt, const std::function<void(int, int)>& on_node = {});

// A per-(layer, linear) table of this rank's layers, placed into a zero [L, 7] double table and
// summed over ranks: every row has exactly one non-zero contributor, so the sum is exact and
// the table is the same for every P. `local[il][i]` is a scalar for stage layer il.
at::Tensor gather_layer_table(parallel::Transport&                                       t,
                              const std::vector<std::array<double, model::kNumLinears>>& local,
                              int64_t layer_begin, int64_t n_layer);
double     table_sum(const at::Tensor& table);  // fixed order: row by row

}  // namespace rq::sensitivity
