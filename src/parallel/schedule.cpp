// Streamed forward and 1F1B forward+backward schedules (requant/parallel/schedule.h).
// Legend: B microbatch sequences, T tokens, C n_embd, M microbatches, P stages, r this rank.
#include "requant/parallel/schedule.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cstdlib>
#include <deque>
#include <memory>
#include <vector>

#include "requant/error.h"
#include "requant/parallel/mpi_env.h"
#include "requant/parallel/replicas.h"
#include "requant/units.h"

namespace rq::parallel {
namespace {

// Fault injection for the error-propagation tests: RQ_FAIL_RANK=r makes world rank r throw
// when it starts microbatch RQ_FAIL_MICRO (default 0), while its peers are blocked in
// communication.
void maybe_inject_fault(int64_t m) {
    static const char* fr = std::getenv("RQ_FAIL_RANK");
    static const char* fm = std::getenv("RQ_FAIL_MICRO");
    if (fr != nullptr && std::atoi(fr) == world_rank() && (fm ? std::atoll(fm) : 0) == m)
        throw InjectedFailure("injected failure at microbatch " + std::to_string(m) +
                              " (RQ_FAIL_RANK=" + fr + ")");
}

double g_busy_cpu_s = 0;  // runners_busy_cpu_s()

}  // namespace

double runners_busy_cpu_s() {
    return g_busy_cpu_s;
}

int activation_tag(int64_t m) {
    return int(m % 16000) * 2;
}
int gradient_tag(int64_t m) {
    return int(m % 16000) * 2 + 1;
}

std::pair<int64_t, int64_t> ScheduleOptions::share(int64_t N) const {
    return replica_share((N + microbatch - 1) / microbatch, replica, replicas);
}

PipelineRunner::PipelineRunner(model::Stage& stage, Transport& transport, ScheduleOptions opt)
    : stage_(stage), t_(transport), opt_(opt) {
    if (opt_.microbatch < 1) throw ConfigError("microbatch must be >= 1");
    if (opt_.max_in_flight < 0) throw ConfigError("max_in_flight must be >= 0 (0: no cap)");
    if (opt.replicas > 1 && (opt.across == nullptr || opt.across->size() != opt.replicas ||
                             opt.across->rank() != opt.replica))
        throw InternalError("a replicated schedule needs its replicas' transport");
    const bool first = t_.rank() == 0, last = t_.rank() == t_.size() - 1;
    if (stage.range().first != first || stage.range().last != last)
        throw ConfigError(
            "rank " + std::to_string(t_.rank()) + " of " + std::to_string(t_.size()) +
            " holds a stage whose embedding/head ownership does not match its position");
}

at::Tensor PipelineRunner::micro_tokens(const at::Tensor& tokens, int64_t m) const {
    const int64_t N = tokens.size(0), b0 = m * opt_.microbatch;
    return tokens.narrow(0, b0, std::min(opt_.microbatch, N - b0));
}

at::Tensor PipelineRunner::recv_activation(const at::Tensor& tok_m, int src, int tag) {
    at::Tensor x = at::empty({tok_m.size(0), tok_m.size(1), stage_.config().n_embd},
                             at::TensorOptions().dtype(stage_.dtype()));
    t_.recv(x, src, tag)->wait();
    return x;
}

PipelineLoss PipelineRunner::share_loss(double sum, int64_t n) {
    // The last stage owns the loss; every rank gets it (rank order fixed: deterministic), then
    // the replicas' sums are added in replica order.
    at::Tensor v = at::tensor({sum, double(n)}, at::kDouble);
    t_.broadcast(v, t_.size() - 1)->wait();
    if (opt_.replicas > 1) opt_.across->allreduce_sum(v)->wait();
    return {v[0].item<double>(), int64_t(v[1].item<double>())};
}

// Sums the linears' gradients over the replicas. Every replica has the same linears requiring
// gradients (a replica without microbatches contributes zeros), and each pass starts from
// fresh gradients (forward_backward checks), so a sum never adds an earlier sum again.
void PipelineRunner::reduce_gradients() {
    if (opt_.replicas <= 1) return;
    for (auto& lw : stage_.weights().layers)
        for (model::Linear l : model::kLinears) {
            at::Tensor& w = lw.linear(l);
            if (!w.requires_grad()) continue;
            at::Tensor g = w.grad().defined() ? w.grad() : at::zeros_like(w);
            opt_.across->allreduce_sum(g)->wait();
            w.mutable_grad() = g;
        }
}

PipelineLoss PipelineRunner::forward(const at::Tensor&                   tokens,
                                     const std::function<void(int64_t)>& on_micro) {
    at::NoGradGuard no_grad;
    const int       r = t_.rank(), P = t_.size();
    const auto [m0, m1]                   = opt_.share(tokens.size(0));
    stats_                                = {};
    stats_.n_micro                        = m1 - m0;
    const auto                        t0  = Clock::now();
    double                            sum = 0;
    int64_t                           n   = 0;
    std::deque<std::unique_ptr<Work>> sends;  // at most two in flight: bounded memory
    for (int64_t m = m0; m < m1; ++m) {
        at::Tensor tok = micro_tokens(tokens, m);
        at::Tensor in  = r == 0 ? tok : recv_activation(tok, r - 1, activation_tag(m));
        maybe_inject_fault(m);
        const auto   tb  = Clock::now();
        const double cb  = process_cpu_s();
        at::Tensor   out = stage_.forward(in, tok);
        if (r == P - 1) {
            sum += out.to(at::kDouble).sum().item<double>();
            n += out.numel();
        }
        stats_.busy_s += since(tb);
        stats_.busy_cpu_s += process_cpu_s() - cb;
        if (r < P - 1) {
            if (sends.size() == 2) sends.front()->wait(), sends.pop_front();
            sends.push_back(t_.send(out.contiguous(), r + 1, activation_tag(m)));
        }
        if (r == 0 && on_micro) on_micro(m - m0 + 1);
    }
    for (auto& s : sends) s->wait();
    const PipelineLoss loss = share_loss(sum, n);
    stats_.wall_s           = since(t0);
    g_busy_cpu_s += stats_.busy_cpu_s;
    return loss;
}

PipelineLoss PipelineRunner::forward_backward(const at::Tensor&                   tokens,
                                              const std::function<void(int64_t)>& on_micro,
                                              const std::function<void(int64_t)>& on_backward) {
    const int     r = t_.rank(), P = t_.size();
    const int64_t N = tokens.size(0), T = tokens.size(1);
    // Plain names, not a structured binding: the lambdas below capture them (C++17).
    const std::pair<int64_t, int64_t> range = opt_.share(N);
    const int64_t                     m0 = range.first, m1 = range.second;
    const int64_t                     M = m1 - m0;  // this replica's microbatches m0, m0 + 1, ...
    stats_                              = {};
    stats_.n_micro                      = M;
    if (opt_.replicas > 1)
        for (auto& lw : stage_.weights().layers)
            for (model::Linear l : model::kLinears)
                if (lw.linear(l).grad().defined())
                    throw InternalError("a replicated forward_backward needs fresh gradients");
    const auto t0 = Clock::now();
    // dF/d(loss_i) for F = mean over every predicted position of the whole batch.
    const at::Tensor dloss =
        at::scalar_tensor(1.0 / double(N * (T - 1)), at::TensorOptions().dtype(stage_.dtype()));

    std::deque<model::StageTape>       inflight;  // forwards not yet backwarded, oldest first
    std::vector<std::unique_ptr<Work>> sends;
    double                             sum      = 0;
    int64_t                            n        = 0;
    int64_t                            next_fwd = m0, next_bwd = m0;

    auto do_forward = [&] {
        const int64_t m   = next_fwd++;
        at::Tensor    tok = micro_tokens(tokens, m);
        at::Tensor    in  = r == 0 ? tok : recv_activation(tok, r - 1, activation_tag(m));
        maybe_inject_fault(m);
        const auto       tb = Clock::now();
        const double     cb = process_cpu_s();
        model::StageTape tape;
        at::Tensor       out = stage_.forward_recorded(in, tok, tape, opt_.keep_graph);
        if (r == P - 1) {
            sum += out.to(at::kDouble).sum().item<double>();
            n += out.numel();
        }
        stats_.busy_s += since(tb);
        stats_.busy_cpu_s += process_cpu_s() - cb;
        if (r < P - 1) sends.push_back(t_.send(out.contiguous(), r + 1, activation_tag(m)));
        inflight.push_back(std::move(tape));
        if (r == 0 && on_micro) on_micro(m - m0 + 1);
    };
    auto do_backward = [&] {
        const int64_t    m    = next_bwd++;
        model::StageTape tape = std::move(inflight.front());
        inflight.pop_front();
        at::Tensor g = dloss;
        if (r < P - 1) {
            g = at::empty({tape.tokens.size(0), tape.tokens.size(1), stage_.config().n_embd},
                          at::TensorOptions().dtype(stage_.dtype()));
            t_.recv(g, r + 1, gradient_tag(m))->wait();
        }
        const auto   tb  = Clock::now();
        const double cb  = process_cpu_s();
        at::Tensor   gin = stage_.backward(tape, g);
        if (on_backward) on_backward(m);
        stats_.busy_s += since(tb);
        stats_.busy_cpu_s += process_cpu_s() - cb;
        if (r > 0) sends.push_back(t_.send(gin.contiguous(), r - 1, gradient_tag(m)));
        // Completed sends release their buffers.
        std::vector<std::unique_ptr<Work>> pending;
        for (auto& s : sends)
            if (!s->is_completed()) pending.push_back(std::move(s));
        sends.swap(pending);
    };

    // Warm-up forwards: P-1-r, capped; non-increasing in r whatever the cap, so a rank never
    // waits for a forward its predecessor holds back.
    int64_t warmup = std::min<int64_t>(P - 1 - r, M);
    if (opt_.max_in_flight > 0) warmup = std::min(warmup, opt_.max_in_flight - 1);
    for (int64_t i = 0; i < warmup; ++i) do_forward();
    while (next_fwd < m1) {
        do_forward();
        do_backward();
    }
    while (next_bwd < m1) do_backward();
    for (auto& s : sends) s->wait();
    reduce_gradients();
    const PipelineLoss loss = share_loss(sum, n);
    stats_.wall_s           = since(t0);
    g_busy_cpu_s += stats_.busy_cpu_s;
    return loss;
}

}  // namespace rq::parallel
