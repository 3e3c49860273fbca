#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "requant/io/hf_config.h"
#include "requant/model/weights.h"

// Splitting a model into pipeline stages: contiguous layer slices, one per rank, balanced by
// cost. A component's cost is its share of the model's forward FLOPs plus its share of the
// parameters (memory), so the token embedding (memory, no FLOPs) and the LM head (both) count.
// Computed from config.json alone.

namespace rq::parallel {

struct StagePlan {
    model::StageRange range;
    double            flops_per_token = 0;  // forward, at the plan's sequence length
    int64_t params = 0;  // parameters the stage holds (a tied head on another stage is a copy)
    double  cost   = 0;  // flops share + params share
};

struct PipelinePlan {
    std::vector<StagePlan> stages;  // stage i runs on rank i
    int64_t                seq_len = 0;
    double                 imbalance() const;  // max cost / mean cost
};

// Throws ConfigError unless 1 <= n_ranks <= n_layer.
PipelinePlan plan_pipeline(const io::LlamaConfig& c, int n_ranks, int64_t seq_len);
// Human-readable table of the plan, one line per rank.
std::string format_plan(const PipelinePlan& p);

}  // namespace rq::parallel
