#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "requant/io/hf_config.h"
#include "requant/io/job.h"
#include "requant/parallel/partition.h"

// `requant-dist plan`: the stage split of a job and each rank's peak memory, from config.json
// alone (no weights are read), so that a user can pick the rank count before asking a cluster
// for nodes. The estimate counts what the run holds at once on a rank, phase by phase:
//   weights     the stage in fp32 (the run computes in fp32 whatever the checkpoint stores)
//   statistics  the statistics and quantize phases: GPTQ X^T X (fp64, per linear input; all
//               layers of the stage at once unless quant.sequential, or a group of layers per
//               calibration pass when run.mem_gib asks for it) and GPTQ's fp64
//               workspace on the widest linear (two [I, I] and W, Q), SqueezeLLM / Fisher
//               diagonals with the gradients they are summed from (fp32, one each per weight),
//               AWQ's block loss (one layer's inputs, outputs and block-input rows, fp32);
//               a layer's statistics are freed once it is quantized
//   w_orig      the detach phase: the stage's original linears, mapped from the checkpoint in
//               its stored dtype (config.json's torch_dtype), resident once read, and the
//               quantized parts (codes, scales) the phase rebuilds w~ from
//   pqi         the detach phase: fp32 gradients and fp32 accumulators per linear weight (w~
//               is rebuilt from its quantized parts one linear at a time)
//   activations what a microbatch in flight keeps (each layer's input: activations are
//               recomputed in backward), times the microbatches in flight (1F1B: P - r on
//               rank r, capped by run.mem_gib), plus the transient of one layer's replay: its
//               saved internals, one attention block's scores, one loss chunk's logits.
//               A run keeps each layer's graph instead of recomputing it (1 forward + 1
//               backward per pass, not 2 + 1) where total_keeping_graph() fits the rank's
//               room: then every layer's saved internals stay per microbatch in flight
//               (graph_per_micro)
//   assembly    rank 0 at the end, the stage freed: the checkpoint's largest other tensor
//               (the embedding) as stored, its file pages, and in fp32
// The peak is weights + activations + the larger of the two phases (statistics, w_orig + pqi),
// or the assembly if larger.
// An estimate: allocator slack, libtorch's workspace, ~0.3 GiB of libraries per process and
// the freed blocks the tensor cache keeps for reuse (model/tensor_cache.h, at most
// RQ_TENSOR_CACHE_MIB, 1 GiB by default, less where the room is tight) come on top.

namespace rq::parallel {

// What a process pages in after start-up whatever the model: libtorch's backward and fp64
// kernels' code, OpenBLAS's packing buffers, Open MPI's transfer buffers, malloc's arena slack.
// A measured constant, not derived: on llama-7m-en's GPTQ + PQI run on 2 ranks
// (launch/bench-1b.sh with RQ_BENCH_MODEL), each rank's peak above start-up exceeded the sum
// of the parts below by 20 MiB (rank 1) to 42 MiB (rank 0, which also tokenizes and writes).
inline constexpr double kRuntimeBytes = 32.0 * 1024 * 1024;

struct RankMemory {
    double  weights = 0, w_orig = 0, pqi = 0, activations = 0;
    double  runtime         = kRuntimeBytes;
    double  statistics      = 0;  // besides X^T X (GPTQ's workspace, Fisher)
    double  assembly        = 0;  // rank 0, after the stage is freed: writing the checkpoint
    double  xtx_layer       = 0;  // one layer's X^T X
    int64_t xtx_layers      = 0;  // layers whose X^T X is held at once
    double  per_micro       = 0;  // bytes one microbatch in flight keeps (part of activations)
    double  transient       = 0;  // bytes of one layer's replay (part of activations)
    int64_t in_flight       = 0;  // microbatches in flight at once
    double  graph_per_micro = 0;  // bytes one microbatch in flight adds when graphs are kept
    double  stats() const { return statistics + xtx_layer * double(xtx_layers); }
    double  total() const {
         return runtime +
                std::max(weights + activations + std::max(stats(), w_orig + pqi), assembly);
    }
    double total_keeping_graph() const {
        RankMemory k = *this;
        k.activations += graph_per_micro * double(in_flight);
        return k.total();
    }
};

struct MemoryPlan {
    PipelinePlan            pipeline;
    std::vector<RankMemory> ranks;             // bytes
    int64_t                 stats_passes = 1;  // calibration passes that collect X^T X
    double                  max_total() const;
};

// With job.run.mem_gib > 0, X^T X is collected in as few passes as fit the budget
// (stats_passes) and the in-flight count is capped to what fits it on every rank
// (in_flight_cap).
MemoryPlan plan_memory(const io::LlamaConfig& c, const io::Job& job, int n_ranks);
// Whether the job may collect X^T X in several passes, a group of layers each: GPTQ taking its
// statistics from the full-precision model, and no Alg. 1 search (which scores every layer
// with them at once).
bool stats_in_passes(const io::Job& job);
// The fewest passes that keep the statistics phase of every rank of `p` within `budget` with
// one microbatch in flight (at most one layer per pass); every rank runs the same passes. Pass k
// covers layers [k n, (k + 1) n) of each stage, n = layers_per_pass(range, passes).
int64_t stats_passes(const MemoryPlan& p, double budget);
int64_t layers_per_pass(const model::StageRange& range, int64_t passes);
// The most microbatches in flight that keep every rank of `p` within `budget` bytes (at least
// 1); the same on every rank, as the schedule needs (ScheduleOptions::max_in_flight).
int64_t in_flight_cap(const MemoryPlan& p, double budget);
// The least rank count whose every rank fits in `gib` (0 if even one per layer does not).
int         ranks_for_memory(const io::LlamaConfig& c, const io::Job& job, double gib);
std::string format_memory_plan(const MemoryPlan& p, const io::LlamaConfig& c);

}  // namespace rq::parallel
