#pragma once
#include <array>
#include <climits>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/model/llama.h"
#include "requant/parallel/schedule.h"
#include "requant/parallel/transport.h"
#include "requant/quant/quantizer.h"

// Calibration statistics of a stage's linears: what the base quantizers need (quant::StatsNeeds)
// and what Alg. 1 scores with. X^T X and mean |x| per linear input and sampled input rows come
// from a forward pass (StatsCollector observes it); the Fisher diagonal from forward+backward
// passes. Statistics of the full-precision model are collected once and shared by the base
// method and Alg. 1. I in_features, O out_features.

namespace rq::sensitivity {

// What to keep of each linear input seen during forward.
struct StatsOptions {
    bool xtx      = false;  // X^T X (fp64), GPTQ's Hessian
    bool abs_mean = false;  // mean |x| per input channel over every token (AWQ)
    // Keep every (total_rows / max_samples)-th input row (at least every row), from the first:
    // the reference AWQ's input_feat[0::n // n_sample_token].
    int64_t max_samples = 0;
    int64_t total_rows  = 0;      // rows that will be observed per input (sets the stride)
    bool    rows        = false;  // every row of the q/k/v and gate/up inputs, as sequences
};
// The options that collect `needs` (samples: up to max_samples rows of total_rows).
StatsOptions stats_options(const quant::StatsNeeds& needs, int64_t max_samples, int64_t total_rows);

// Accumulates statistics per (layer, linear input) during forward.
class StatsCollector : public model::LinearObserver {
  public:
    explicit StatsCollector(StatsOptions o = {}) : opt_(o) {}
    void observe(int64_t layer, model::LinearInput which, const at::Tensor& x) override;
    // Each throws InternalError if nothing was observed for (layer, which).
    const at::Tensor& xtx(int64_t layer, model::LinearInput which) const;       // double [I, I]
    at::Tensor        abs_mean(int64_t layer, model::LinearInput which) const;  // float [I]
    at::Tensor        samples(int64_t layer, model::LinearInput which) const;   // float [n, I]
    // float [N, T, I]; undefined for the other inputs or without options.rows.
    at::Tensor rows(int64_t layer, model::LinearInput which) const;
    // Whatever was collected for the input, as the quantizers take it.
    quant::InputStats input(int64_t layer, model::LinearInput which) const;
    void              clear() { acc_.clear(); }
    // Observe only layers [begin, end) from now on (all by default).
    void observe_layers(int64_t begin, int64_t end) { window_ = {begin, end}; }
    // Observe only the linear inputs marked (model::LinearInput order) from now on (all by
    // default): GPTQ's true_sequential needs one input per pass.
    void observe_inputs(const std::array<bool, 4>& which) { inputs_ = which; }
    // With replicas: this replica's rows start at `row` of the whole calibration stream (the
    // samples are strided over the whole stream).
    void start_at_row(int64_t row) { row0_ = row; }
    // With replicas: sums what every replica collected over schedule.across in replica order
    // (samples and rows concatenated in replica order), so every replica holds what one pass
    // over all rows would have. A no-op for one replica. Collective over the replicas.
    void reduce(const parallel::ScheduleOptions& schedule);
    // Frees what was collected for `layer` (its quantization is done); other layers keep theirs.
    void release(int64_t layer);

  private:
    struct Entry {
        at::Tensor              xtx, abs_sum;
        std::vector<at::Tensor> samples;
        std::vector<at::Tensor> all;  // options.rows: every microbatch, float [B, T, I]
        int64_t                 rows = 0;
    };
    const Entry& entry(int64_t layer, model::LinearInput which) const;

    StatsOptions                             opt_;
    std::pair<int64_t, int64_t>              window_{0, INT64_MAX};
    std::array<bool, 4>                      inputs_{true, true, true, true};
    int64_t                                  row0_ = 0;
    std::map<std::pair<int64_t, int>, Entry> acc_;
};

// One streamed forward of `tokens` through the pipeline with `stats` observing this rank's
// layers; with replicas, each replica's share, then summed (StatsCollector::reduce).
// Collective.
void collect_forward_stats(model::Stage& stage, parallel::Transport& t, const at::Tensor& tokens,
                           const parallel::ScheduleOptions& schedule, StatsCollector& stats);

// Fisher diagonal of every linear of the stage: the sum over calibration sequences of squared
// per-sequence gradients of that sequence's mean loss (SqueezeLLM), from 1F1B passes with one
// sequence per microbatch (`schedule` gives the in-flight cap and the replicas). float [O, I]
// per linear. Collective.
model::StageTensors fisher_diagonal(model::Stage& stage, parallel::Transport& t,
                                    const at::Tensor& tokens, parallel::ScheduleOptions schedule);

}  // namespace rq::sensitivity
