#pragma once
#include <cstdint>
#include <functional>
#include <utility>

#include <ATen/core/Tensor.h>

#include "requant/model/llama.h"
#include "requant/parallel/transport.h"

// Pipeline schedules over the data plane. Rank r of the transport runs stage r. Sequences are
// cut into microbatches of `microbatch` sequences (the last may be smaller) that flow through
// the stages:
// - forward(): streamed, forward only (evaluation, activation statistics);
// - forward_backward(): 1F1B — each stage runs min(P-1-r, M) warm-up forwards, then alternates
//   one forward and one backward, then drains; a microbatch in flight keeps only the input of
//   each of the stage's layers (model::StageTape), its backward recomputes one layer at a time.
//   Weight gradients accumulate in the stage's linears over all microbatches.
// Results are bitwise identical for every P with the same microbatch size and thread count:
// each stage does exactly the work of the single-process run, in the same order.
// N sequences, T tokens, C n_embd, M microbatches.

namespace rq::parallel {

struct PipelineLoss {
    double  loss_sum    = 0;  // sum of per-position losses (double), valid on every rank
    int64_t n_predicted = 0;  // N * (T - 1)
    double  mean() const { return n_predicted ? loss_sum / double(n_predicted) : 0.0; }
};

// Sums over replicas are counted by the Transport (Transport::Traffic), not here.
struct ScheduleStats {
    double  wall_s     = 0;  // whole schedule on this rank
    double  busy_s     = 0;  // forward/backward compute on this rank
    double  busy_cpu_s = 0;  // the CPU seconds of that compute (process_cpu_s)
    int64_t n_micro    = 0;  // microbatches this rank ran
};

// CPU seconds of every runner of this process so far in compute (ScheduleStats::busy_cpu_s
// summed), for per-phase accounting.
double runners_busy_cpu_s();

// Message tags of microbatch m between neighbouring stages: activations forward (even),
// gradients backward (odd). Reused modulo a bound every MPI guarantees (32767); messages with
// the same peer and tag stay in order, so reuse is safe. Every sender of hidden states to the
// next stage (the runner, sequential quantization) uses these.
int activation_tag(int64_t m);
int gradient_tag(int64_t m);

// How sequences flow: `microbatch` sequences per microbatch, and at most `max_in_flight`
// microbatches forwarded but not yet backwarded on any rank (0: 1F1B's own bound, P - r on
// rank r). A cap k < P - r lowers the warm-up to k - 1 forwards on the first ranks: the bubble
// grows, memory does not, and the results stay bitwise the same (every microbatch does the same
// work, and backwards still run in microbatch order).
// With replicas (parallel/replicas.h), each replica runs its share of the microbatches
// (replica_share) and the loss and the linears' gradients are summed over `across`, the ranks
// of this stage in every replica, in replica order.
struct ScheduleOptions {
    ScheduleOptions(int64_t mb = 1, int64_t in_flight = 0)  // NOLINT: a microbatch alone is one
        : microbatch(mb), max_in_flight(in_flight) {}
    int64_t microbatch;
    int64_t max_in_flight;
    // Keep each layer's autograd graph from forward to backward instead of recomputing it
    // (model::Stage::forward_recorded): 1 forward + 1 backward per pass instead of 2 + 1, the
    // same results bit for bit, for more memory (memory_plan.h: graph_per_micro).
    bool       keep_graph = false;
    int        replica = 0, replicas = 1;
    Transport* across = nullptr;  // required when replicas > 1
    // This replica's microbatches [begin, end) of N sequences.
    std::pair<int64_t, int64_t> share(int64_t N) const;
};

class PipelineRunner {
  public:
    // The runner borrows both; stage index = transport rank, stages = transport size.
    PipelineRunner(model::Stage& stage, Transport& transport, ScheduleOptions opt);

    // tokens: int64 [N, T], the same on every rank. on_micro(done) is called on rank 0 after it
    // has pushed each microbatch (done counts this replica's). Returns the loss (over all N)
    // on every rank.
    PipelineLoss forward(const at::Tensor&                   tokens,
                         const std::function<void(int64_t)>& on_micro = {});
    // F = mean loss over all N*(T-1) positions; dF/dW accumulates in the linears' .grad()
    // (summed over replicas at the end).
    // on_backward(m), if set, runs on every rank right after microbatch m's backward on that
    // rank (per-microbatch gradient statistics such as the Fisher diagonal).
    PipelineLoss forward_backward(const at::Tensor&                   tokens,
                                  const std::function<void(int64_t)>& on_micro    = {},
                                  const std::function<void(int64_t)>& on_backward = {});

    const ScheduleStats& stats() const { return stats_; }
    // The ideal bubble fraction of this schedule, (P-1)/(M+P-1).
    static double ideal_bubble(int P, int64_t M) { return double(P - 1) / double(M + P - 1); }

  private:
    at::Tensor   micro_tokens(const at::Tensor& tokens, int64_t m) const;
    at::Tensor   recv_activation(const at::Tensor& tok_m, int src, int tag);
    PipelineLoss share_loss(double sum, int64_t n);
    void         reduce_gradients();

    model::Stage&   stage_;
    Transport&      t_;
    ScheduleOptions opt_;
    ScheduleStats   stats_;
};

}  // namespace rq::parallel
