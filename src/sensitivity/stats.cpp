// Calibration statistics of a stage's linears (requant/sensitivity/stats.h).
// Legend: N calibration sequences, I in_features, O out_features.
#include "requant/sensitivity/stats.h"

#include <ATen/ATen.h>

#include "requant/error.h"
#include "requant/parallel/schedule.h"

namespace rq::sensitivity {

StatsOptions stats_options(const quant::StatsNeeds& needs, int64_t max_samples,
                           int64_t total_rows) {
    StatsOptions o;
    o.xtx         = needs.xtx;
    o.abs_mean    = needs.abs_mean;
    o.max_samples = needs.samples ? max_samples : 0;
    o.total_rows  = total_rows;
    o.rows        = needs.rows;
    return o;
}

namespace {

bool block_input(model::LinearInput which) {  // read by the first linears of a block
    return which == model::LinearInput::Attn || which == model::LinearInput::Mlp;
}

// Each replica's parts, concatenated along dim 0, at its offset of a zeroed tensor (x + 0 is
// exact), summed over the replicas: every replica gets all of them in replica order. `shape`:
// the parts' shape after dim 0, for a replica that has none.
at::Tensor gather(const std::vector<at::Tensor>& parts, std::vector<int64_t> shape,
                  at::ScalarType dtype, const parallel::ScheduleOptions& schedule) {
    parallel::Transport& across = *schedule.across;
    shape.insert(shape.begin(), 0);
    const at::Tensor mine    = parts.empty() ? at::empty(shape, dtype) : at::cat(parts, 0);
    at::Tensor       counts  = at::zeros({schedule.replicas}, at::kLong);
    counts[schedule.replica] = mine.size(0);
    across.allreduce_sum(counts)->wait();
    const int64_t offset = counts.narrow(0, 0, schedule.replica).sum().item<int64_t>();
    shape[0]             = counts.sum().item<int64_t>();
    at::Tensor all       = at::zeros(shape, mine.options());
    all.narrow(0, offset, mine.size(0)).copy_(mine);
    across.allreduce_sum(all)->wait();
    return all;
}

}  // namespace

void StatsCollector::observe(int64_t layer, model::LinearInput which, const at::Tensor& x) {
    if (layer < window_.first || layer >= window_.second || !inputs_[std::size_t(which)]) return;
    const at::Tensor x2 = x.detach().reshape({-1, x.size(-1)});  // [rows, I]
    Entry&           e  = acc_[{layer, int(which)}];
    if (opt_.xtx) {
        const at::Tensor g = x2.t().matmul(x2).to(at::kDouble);  // fp32 GEMM, fp64 running sum
        if (!e.xtx.defined())
            e.xtx = g;
        else
            e.xtx.add_(g);
    }
    if (opt_.abs_mean) {
        const at::Tensor a = x2.abs().to(at::kDouble).sum(0);
        if (!e.abs_sum.defined())
            e.abs_sum = a;
        else
            e.abs_sum.add_(a);
    }
    if (opt_.max_samples > 0) {
        // Rows e.rows, e.rows+1, ... of the whole calibration stream; keep every stride-th.
        const int64_t stride = std::max<int64_t>(1, opt_.total_rows / opt_.max_samples);
        const int64_t at     = row0_ + e.rows;  // in the whole calibration stream
        const int64_t first  = (stride - at % stride) % stride;
        if (first < x2.size(0))
            e.samples.push_back(
                x2.narrow(0, first, x2.size(0) - first).slice(0, 0, c10::nullopt, stride).clone());
    }
    if (opt_.rows && block_input(which)) e.all.push_back(x.detach().to(at::kFloat, false, true));
    e.rows += x2.size(0);
}

void StatsCollector::reduce(const parallel::ScheduleOptions& schedule) {
    row0_ = 0;
    if (schedule.replicas <= 1) return;
    parallel::Transport& across = *schedule.across;
    for (auto& [key, e] : acc_) {  // the same keys on every replica, in the same order
        if (e.xtx.defined()) across.allreduce_sum(e.xtx)->wait();
        if (e.abs_sum.defined()) across.allreduce_sum(e.abs_sum)->wait();
        at::Tensor n = at::tensor({e.rows}, at::kLong);
        across.allreduce_sum(n)->wait();
        e.rows = n.item<int64_t>();
        if (opt_.rows && block_input(model::LinearInput(key.second))) {
            // [T, I] from the replicas that have rows (a replica may have no microbatch)
            at::Tensor d = at::zeros({3}, at::kLong);
            if (!e.all.empty())
                d[0] = 1, d[1] = e.all.front().size(1), d[2] = e.all.front().size(2);
            across.allreduce_sum(d)->wait();
            const int64_t n = std::max<int64_t>(1, d[0].item<int64_t>());
            e.all = {gather(e.all, {d[1].item<int64_t>() / n, d[2].item<int64_t>() / n}, at::kFloat,
                            schedule)};
        }
        if (opt_.max_samples <= 0) continue;
        if (e.samples.empty() && !e.abs_sum.defined())
            throw InternalError("stats: sampled inputs without their width");
        e.samples = {gather(e.samples, {e.abs_sum.size(0)}, at::kFloat, schedule)};
    }
}

void StatsCollector::release(int64_t layer) {
    for (auto it = acc_.begin(); it != acc_.end();)
        it = it->first.first == layer ? acc_.erase(it) : std::next(it);
}

const StatsCollector::Entry& StatsCollector::entry(int64_t layer, model::LinearInput which) const {
    const auto it = acc_.find({layer, int(which)});
    if (it == acc_.end())
        throw InternalError("no calibration statistics for layer " + std::to_string(layer));
    return it->second;
}

const at::Tensor& StatsCollector::xtx(int64_t layer, model::LinearInput which) const {
    return entry(layer, which).xtx;
}

at::Tensor StatsCollector::abs_mean(int64_t layer, model::LinearInput which) const {
    const Entry& e = entry(layer, which);
    return (e.abs_sum / double(e.rows)).to(at::kFloat);
}

at::Tensor StatsCollector::samples(int64_t layer, model::LinearInput which) const {
    return at::cat(entry(layer, which).samples, 0);
}

at::Tensor StatsCollector::rows(int64_t layer, model::LinearInput which) const {
    const Entry& e = entry(layer, which);
    return e.all.empty() ? at::Tensor() : at::cat(e.all, 0);
}

quant::InputStats StatsCollector::input(int64_t layer, model::LinearInput which) const {
    quant::InputStats s;
    if (opt_.xtx) s.xtx = xtx(layer, which);
    if (opt_.abs_mean) s.abs_mean = abs_mean(layer, which);
    if (opt_.max_samples > 0) s.samples = samples(layer, which);
    if (opt_.rows) s.rows = rows(layer, which);
    return s;
}

void collect_forward_stats(model::Stage& stage, parallel::Transport& t, const at::Tensor& tokens,
                           const parallel::ScheduleOptions& schedule, StatsCollector& stats) {
    at::NoGradGuard no_grad;
    stats.start_at_row(schedule.share(tokens.size(0)).first * schedule.microbatch * tokens.size(1));
    stage.set_observer(&stats);
    parallel::PipelineRunner(stage, t, schedule).forward(tokens);
    stage.set_observer(nullptr);
    stats.reduce(schedule);
}

model::StageTensors fisher_diagonal(model::Stage& stage, parallel::Transport& t,
                                    const at::Tensor& tokens, parallel::ScheduleOptions schedule) {
    model::enable_linear_grads(stage.weights());
    model::StageTensors fisher(stage.weights().layers.size());
    for (std::size_t il = 0; il < fisher.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            fisher[il][i] =
                at::zeros_like(stage.weights().layers[il].linear(model::kLinears[i]).detach());
    // The runner's loss is the mean over all N sequences: N * grad is the gradient of the one
    // sequence's own mean loss.
    const double n      = double(tokens.size(0));
    schedule.microbatch = 1;
    parallel::PipelineRunner(stage, t, schedule).forward_backward(tokens, {}, [&](int64_t) {
        for (std::size_t il = 0; il < fisher.size(); ++il)
            for (std::size_t i = 0; i < model::kNumLinears; ++i) {
                at::Tensor& w = stage.weights().layers[il].linear(model::kLinears[i]);
                fisher[il][i].add_((w.grad() * n).square());
                w.mutable_grad() = at::Tensor();
            }
    });
    for (auto& lw : stage.weights().layers)
        for (model::Linear l : model::kLinears) lw.linear(l) = lw.linear(l).detach();
    if (schedule.replicas > 1)  // each replica summed its own sequences
        for (auto& layer : fisher)
            for (auto& f : layer) schedule.across->allreduce_sum(f)->wait();
    return fisher;
}

}  // namespace rq::sensitivity
