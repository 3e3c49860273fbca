#pragma once
#include <string>
#include <vector>

#include "requant/io/hf_config.h"
#include "requant/io/job.h"
#include "requant/parallel/partition.h"

// `requant-dist plan`: the stage split of a job and each rank's peak memory, from config.json
// alone (no weights are read), so that a user can pick the rank count before asking a cluster
// for nodes. The estimate counts what the run holds at once on a rank:
//   weights     the stage in fp32 (the run computes in fp32 whatever the checkpoint stores)
//   w_orig      a second fp32 copy of the stage's linears (detach)
//   statistics  GPTQ X^T X (fp64, per linear input; all layers of the stage at once unless
//               quant.sequential), SqueezeLLM / Fisher diagonals (fp32, one per weight)
//   pqi         fp32 gradients + fp64 accumulators per linear weight (detach; gradients
//               alone for the Fisher diagonal)
//   activations one microbatch's saved activations per layer (1F1B keeps up to P - rank
//               microbatches in flight on rank r), plus logits and their gradient on the last
// An estimate: allocator slack, libtorch's workspace and ~0.3 GiB of libraries per process come
// on top.

namespace rq::parallel {

struct RankMemory {
    double weights = 0, w_orig = 0, statistics = 0, pqi = 0, activations = 0;
    double total() const { return weights + w_orig + statistics + pqi + activations; }
};

struct MemoryPlan {
    PipelinePlan            pipeline;
    std::vector<RankMemory> ranks;  // bytes
    double                  max_total() const;
};

MemoryPlan plan_memory(const io::LlamaConfig& c, const io::Job& job, int n_ranks);
// The least rank count whose every rank fits in `gib` (0 if even one per layer does not).
int         ranks_for_memory(const io::LlamaConfig& c, const io::Job& job, double gib);
std::string format_memory_plan(const MemoryPlan& p, const io::LlamaConfig& c);

}  // namespace rq::parallel
