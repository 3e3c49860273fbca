// Phases statistics, outliers and quantize (requant/phases/phases.h).
// Legend: N calibration sequences, B microbatch, T tokens, C n_embd.
#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <set>
#include <thread>
#include <tuple>

#include "requant/decompose/outliers.h"
#include "requant/error.h"
#include "requant/parallel/memory_plan.h"
#include "requant/phases/phases.h"
#include "requant/phases/progress.h"
#include "requant/store/dump.h"
#include "requant/store/state.h"
#include "requant/units.h"

namespace rq::phases {
namespace {

// Layer by layer in model order; hidden states pass from rank to rank. Sequential (GPTQ's
// reference order, quant.sequential): each layer's statistics are taken from inputs that passed
// through the already-quantized layers before it. fp_inputs (AWQ's block loss, which needs
// every row of one layer's inputs at a time): from inputs of the full-precision model, as the
// reference AWQ.
class Sequential {
  public:
    Sequential(RunContext& ctx, bool fp_inputs) : ctx_(ctx), fp_(fp_inputs) {
        const int64_t N = ctx.calib.size(0), T = ctx.calib.size(1), mb = ctx.job.run.microbatch;
        std::tie(m0_, m1_) = ctx.schedule.share(N);  // this replica's microbatches
        for (int64_t m = m0_; m < m1_; ++m) {
            const int64_t b = std::min(mb, N - m * mb);
            if (ctx.rank == 0) {
                x_.push_back(ctx.stage->embed_tokens(ctx.calib.narrow(0, m * mb, b)));
            } else {
                x_.push_back(at::empty({b, T, ctx.stage->config().n_embd},
                                       at::TensorOptions().dtype(ctx.stage->dtype())));
                ctx.t.recv(x_.back(), ctx.rank - 1, parallel::activation_tag(m))->wait();
            }
        }
    }
    // This layer's statistics on the current hidden states (of every replica).
    // (fp_inputs: the layer's outputs too, while its weights are the original ones.)
    void collect(int64_t l, sensitivity::StatsCollector& stats) {
        stats.clear();
        stats.start_at_row(m0_ * ctx_.job.run.microbatch * ctx_.calib.size(1));
        ctx_.stage->set_observer(&stats);
        y_.clear();
        for (const auto& xm : x_) {
            at::Tensor y = ctx_.stage->forward_layer(l, xm);
            if (fp_) y_.push_back(std::move(y));
        }
        ctx_.stage->set_observer(nullptr);
        stats.reduce(ctx_.schedule);
    }
    // fp_inputs, for a layer reused from an earlier run (no collect): its full-precision
    // outputs, before it takes the quantized weights.
    void keep_fp_outputs(int64_t l) {
        y_.clear();
        for (const auto& xm : x_)
            if (fp_) y_.push_back(ctx_.stage->forward_layer(l, xm));
    }
    void advance(int64_t l) {  // through the quantized layer, or to the full-precision outputs
        if (fp_) {
            if (y_.size() != x_.size()) throw InternalError("sequential: no outputs of layer");
            x_ = std::move(y_);
            y_.clear();
            return;
        }
        for (auto& xm : x_) xm = ctx_.stage->forward_layer(l, xm);
    }
    void send_on() {
        if (ctx_.rank == ctx_.P - 1) return;
        std::vector<std::unique_ptr<parallel::Work>> sends;
        for (std::size_t m = 0; m < x_.size(); ++m)
            sends.push_back(ctx_.t.send(x_[m].contiguous(), ctx_.rank + 1,
                                        parallel::activation_tag(m0_ + int64_t(m))));
        for (auto& s : sends) s->wait();
    }

  private:
    RunContext&             ctx_;
    bool                    fp_;
    int64_t                 m0_ = 0, m1_ = 0;
    std::vector<at::Tensor> x_;  // this rank's input hidden states per microbatch [B, T, C]
    std::vector<at::Tensor> y_;  // fp_inputs: the current layer's full-precision outputs
};

// Whether the quantize loop goes layer by layer (Sequential).
bool layerwise(const io::JobQuant& q) {
    const quant::StatsNeeds needs = quant::stats_needs(q);
    return needs.forward() && (q.sequential || needs.rows);
}

}  // namespace

Statistics statistics(RunContext& ctx) {
    const auto&       job      = ctx.job;
    quant::StatsNeeds needs    = quant::stats_needs(job.quant);
    const bool        adaptive = job.requant.outliers() == io::OutlierSelect::Adaptive;
    Statistics        s;
    const auto        t0 = Clock::now();
    if (needs.fisher || job.requant.significant() == io::SignificantSelect::Fisher)
        s.fisher = sensitivity::fisher_diagonal(*ctx.stage, ctx.t, ctx.calib, ctx.schedule);
    // Full-precision forward statistics: for the method unless it goes layer by layer, and for
    // Alg. 1's objective (without the rows: every layer's at once would not fit).
    needs.rows = false;
    if (needs.forward() && (!layerwise(job.quant) || adaptive)) {
        s.forward     = sensitivity::StatsCollector(sensitivity::stats_options(
                needs, job.quant.awq_samples, ctx.calib.size(0) * ctx.calib.size(1)));
        s.has_forward = true;
        // Under run.mem_gib, X^T X may be collected a group of layers per pass, in quantize.
        s.passes = ctx.stats_passes;
        if (s.passes == 1)
            sensitivity::collect_forward_stats(*ctx.stage, ctx.t, ctx.calib, ctx.schedule,
                                               s.forward);
    }
    s.seconds = since(t0);
    return s;
}

decompose::SparseSelection outliers(RunContext& ctx, const Statistics& stats,
                                    nlohmann::json& report) {
    const auto&                job    = ctx.job;
    const model::StageTensors* fisher = stats.fisher.empty() ? nullptr : &stats.fisher;
    model::StageTensors        adaptive;
    if (job.requant.outliers() == io::OutlierSelect::Adaptive) {
        const auto t0 = Clock::now();
        adaptive      = decompose::adaptive_outliers(*ctx.stage, ctx.t, job.quant, job.requant,
                                                     stats.forward, fisher, report);
        ctx.st.phase_s["outlier_search"] = since(t0);
    }
    return decompose::select_sparse(*ctx.stage, ctx.t, job.requant, fisher,
                                    adaptive.empty() ? nullptr : &adaptive);
}

namespace {

// The quantize loop's state: the layers done so far and the seconds spent.
// - With statistics in passes, every pass runs through the full-precision model: the stage
//   keeps its original linears until the last layer is quantized (`defer`), then takes the
//   quantized ones.
// - With replicas, layer i of the stage is quantized by replica i mod R, which writes its
//   layer file; the other replicas read it after the pass (the run folder is shared, as the
//   checkpoint assembly already needs). Sequential quantization needs each layer before the
//   next: there replica 0 quantizes every layer and the others take it layer by layer (every
//   replica still collects its share of each layer's statistics).
struct LayerLoop {
    RunContext&                        ctx;
    Statistics&                        stats;
    const decompose::SparseSelection&  sel;
    std::unique_ptr<Sequential>        seq;
    sensitivity::StatsCollector        layer_stats;  // sequential: the current layer's
    std::vector<decompose::LayerQuant> out;          // per layer of the stage
    double                             quantize_s = 0, stats_s = 0, quantize_cpu_s = 0;
    bool                               defer    = false;
    int64_t                            n_reused = 0;  // layers of an earlier run, so far

    // The replica that quantizes layer i of the stage: i mod R, or replica 0 when sequential.
    int  owner(int64_t i) const { return seq ? 0 : int(i % ctx.R); }
    bool mine(int64_t i) const { return owner(i) == ctx.replica; }
    // Statistics of layers [lo, hi) of this rank, in one calibration pass (collective).
    void collect_pass(int64_t lo, int64_t hi) {
        const auto t0 = Clock::now();
        stats.forward.observe_layers(lo, hi);
        sensitivity::collect_forward_stats(*ctx.stage, ctx.t, ctx.calib, ctx.schedule,
                                           stats.forward);
        stats_s += since(t0);
    }
    void                       pass(int64_t lo, int64_t hi);
    void                       exchange(int64_t lo, int64_t hi, const std::vector<bool>& reused);
    void                       layer(int64_t l, std::optional<decompose::LayerQuant> done);
    void                       quantize_at_once(int64_t l, int64_t i);
    void                       quantize_true_sequential(int64_t l, int64_t i);
    const model::LayerTensors* masks_of(const model::StageTensors& m, int64_t i) const {
        return m.empty() ? nullptr : &m[std::size_t(i)];
    }
    bool true_seq() const {
        return seq && ctx.job.quant.sequential && ctx.job.quant.true_sequential &&
               ctx.job.quant.method == io::QuantMethod::Gptq;
    }
    void take(int64_t i, decompose::LayerQuant q) {
        if (!defer) decompose::set_layer_weights(*ctx.stage, std::size_t(i), q);
        out[std::size_t(i)] = std::move(q);
    }
    // --dump-layer: OUT/dump/layer-NNN.h5 (store/dump.h), from the weights the method was given.
    void write_dump(int64_t l, int64_t i, const model::LayerTensors& w,
                    const decompose::LayerStats& s) const {
        model::LayerTensors sparse;
        for (const auto* m : {&sel.outliers, &sel.significant})
            for (std::size_t j = 0; !m->empty() && j < model::kNumLinears; ++j) {
                const at::Tensor& t = (*m)[std::size_t(i)][j];
                if (t.defined()) sparse[j] = sparse[j].defined() ? sparse[j].logical_or(t) : t;
            }
        char name[32];
        std::snprintf(name, sizeof name, "layer-%03lld.h5", (long long)l);
        const std::filesystem::path dir = std::filesystem::path(ctx.out) / "dump";
        std::filesystem::create_directories(dir);
        const std::string path = (dir / name).string();
        store::write_layer_dump(path, l, ctx.job.quant, w, sparse, s, out[std::size_t(i)]);
        ctx.log->info("layer {}: dumped to {}", l, path);
    }
};

void LayerLoop::pass(int64_t lo, int64_t hi) {
    // Layers of an earlier run, decided before this pass writes any file; with replicas,
    // reused only where every replica can read them back.
    std::vector<std::optional<decompose::LayerQuant>> done;
    at::Tensor                                        missing = at::zeros({hi - lo}, at::kDouble);
    for (int64_t l = lo; l < hi; ++l) {
        done.push_back(store::read_layer_state(ctx.out, l, ctx.fp));
        if (!done.back()) missing[l - lo] = 1.0;
    }
    ctx.across.allreduce_sum(missing)->wait();
    for (int64_t l = lo; l < hi; ++l) {
        auto& d = done[std::size_t(l - lo)];
        if (missing[l - lo].item<double>() > 0) d.reset();
        n_reused += d ? 1 : 0;
        const bool reused = d.has_value();
        layer(l, std::move(d));
        if (seq) {  // the next layer's inputs need this one
            exchange(l, l + 1, {reused});
            const auto t0 = Clock::now();
            seq->advance(l);
            stats_s += since(t0);
        }
    }
    if (!seq) {
        std::vector<bool> reused;
        for (int64_t l = lo; l < hi; ++l) reused.push_back(missing[l - lo].item<double>() == 0);
        exchange(lo, hi, reused);
    }
}

// Every replica takes the layers [lo, hi) other replicas quantized, from their layer files.
void LayerLoop::exchange(int64_t lo, int64_t hi, const std::vector<bool>& reused) {
    if (ctx.R == 1) return;
    const int64_t l0 = ctx.range().layer_begin;
    ctx.across.barrier()->wait();  // every owner has written its layers
    for (int64_t l = lo; l < hi; ++l) {
        if (mine(l - l0) || reused[std::size_t(l - lo)]) continue;
        // A shared file system may show a new file late: look again for up to a minute.
        auto q = store::read_layer_state(ctx.out, l, ctx.fp);
        for (int k = 0; !q && k < 60; ++k) {
            std::this_thread::sleep_for(std::chrono::seconds(1));
            q = store::read_layer_state(ctx.out, l, ctx.fp);
        }
        if (!q)
            throw StateError(ctx.out + ": layer " + std::to_string(l) + ", quantized by replica " +
                             std::to_string(owner(l - l0)) + ", is not readable here");
        take(l - l0, std::move(*q));
    }
}

void LayerLoop::layer(int64_t l, std::optional<decompose::LayerQuant> done) {
    const int64_t i = l - ctx.range().layer_begin;
    if (done) {
        if (seq) seq->keep_fp_outputs(l);
        take(i, std::move(*done));
        ctx.log->info("layer {}: reused from an earlier run", l);
    } else if (true_seq()) {
        quantize_true_sequential(l, i);
    } else {
        quantize_at_once(l, i);
    }
    // This layer's statistics are no longer needed: X^T X alone is 0.5 GiB for one
    // Llama-3.2-1B down_proj.
    if (stats.has_forward) stats.forward.release(l);
    if (!stats.fisher.empty()) stats.fisher[std::size_t(i)] = model::LayerTensors{};
}

// The layer's linears in one go, on statistics of the unquantized layer (collected here when
// sequential; every replica takes part), by the replica that owns it.
void LayerLoop::quantize_at_once(int64_t l, int64_t i) {
    auto&                              lw = ctx.stage->weights().layers[std::size_t(i)];
    auto                               t0 = Clock::now();
    const sensitivity::StatsCollector* st = nullptr;
    if (seq) {  // every replica: the statistics are summed over them
        seq->collect(l, layer_stats);
        st = &layer_stats;
    } else if (stats.has_forward) {
        st = &stats.forward;
    }
    stats_s += since(t0);
    if (mine(i)) {
        t0                     = Clock::now();
        const double        c0 = process_cpu_s();
        const auto*         f  = stats.fisher.empty() ? nullptr : &stats.fisher[std::size_t(i)];
        model::LayerTensors full;  // deferred: the originals, put back after quantize_layer
        for (std::size_t j = 0; defer && j < model::kNumLinears; ++j)
            full[j] = lw.linear(model::kLinears[j]);
        decompose::LayerErrors errors;  // for the report, while the statistics are here
        auto                   stats_l = decompose::layer_stats(st, l, f);
        stats_l.config                 = &ctx.stage->config();
        const bool          dump       = ctx.dump_layers.count(l) > 0;
        model::LayerTensors before;  // --dump-layer: the weights the method is given
        for (std::size_t j = 0; dump && j < model::kNumLinears; ++j)
            before[j] = lw.linear(model::kLinears[j]);
        out[std::size_t(i)] =
            decompose::quantize_layer(*ctx.stage, l, stats_l, masks_of(sel.outliers, i),
                                      masks_of(sel.significant, i), ctx.job.quant, &errors);
        if (dump) write_dump(l, i, before, stats_l);
        for (std::size_t j = 0; defer && j < model::kNumLinears; ++j)
            lw.linear(model::kLinears[j]) = full[j];
        quantize_s += since(t0);
        quantize_cpu_s += process_cpu_s() - c0;
        store::write_layer_state(ctx.out, l, out[std::size_t(i)], ctx.fp, &errors);
        ctx.log->info("layer {}: quantized and saved ({}/{} of this rank)", l, i + 1,
                      ctx.range().layer_end - ctx.range().layer_begin);
    }
}

// GPTQ's true_sequential: q/k/v, then o_proj, then gate/up, then down_proj, each group's
// statistics taken with the groups before it already quantized. Every replica quantizes each
// group (the statistics are summed over the replicas, so each needs the quantized groups for
// the next pass; the inputs are the same everywhere); the owner saves the layer.
void LayerLoop::quantize_true_sequential(int64_t l, int64_t i) {
    auto&                  lw = ctx.stage->weights().layers[std::size_t(i)];
    const auto             t0 = Clock::now();
    const double           c0 = process_cpu_s(), stats0 = stats_s;
    const bool             dump = ctx.dump_layers.count(l) > 0 && mine(i);
    model::LayerTensors    before;  // --dump-layer: the weights the method is given
    decompose::LayerStats  merged;  // each input's statistics as its group got them
    decompose::LayerErrors errors;
    decompose::LayerQuant& q = out[std::size_t(i)];
    for (std::size_t j = 0; dump && j < model::kNumLinears; ++j)
        before[j] = lw.linear(model::kLinears[j]);
    merged.config = &ctx.stage->config();
    for (std::size_t k = 0; k < merged.inputs.size(); ++k) {
        const auto          ts = Clock::now();
        decompose::InputSet only{};
        only[k] = true;
        layer_stats.observe_inputs(only);  // this group's input alone
        seq->collect(l, layer_stats);
        layer_stats.observe_inputs(decompose::kAllInputs);
        stats_s += since(ts);
        decompose::LayerStats st;  // the group's input only: the others were not observed
        st.config        = merged.config;
        st.inputs[k]     = layer_stats.input(l, model::LinearInput(k));
        merged.inputs[k] = st.inputs[k];
        decompose::LayerErrors      e;
        const decompose::LayerQuant part =
            decompose::quantize_layer(*ctx.stage, l, st, masks_of(sel.outliers, i),
                                      masks_of(sel.significant, i), ctx.job.quant, &e, only);
        for (std::size_t j = 0; j < model::kNumLinears; ++j)
            if (std::size_t(model::linear_input(model::kLinears[j])) == k)
                q[j] = part[j], errors[j] = e[j];
    }
    quantize_s += since(t0) - (stats_s - stats0);
    quantize_cpu_s += process_cpu_s() - c0;
    if (!mine(i)) return;
    if (dump) write_dump(l, i, before, merged);
    store::write_layer_state(ctx.out, l, q, ctx.fp, &errors);
    ctx.log->info("layer {}: quantized and saved ({}/{} of this rank)", l, i + 1,
                  ctx.range().layer_end - ctx.range().layer_begin);
}

}  // namespace

std::vector<decompose::LayerQuant> quantize(RunContext& ctx, Statistics& stats,
                                            const decompose::SparseSelection& sel) {
    const auto&             job    = ctx.job;
    const auto&             range  = ctx.range();
    const quant::StatsNeeds needs  = quant::stats_needs(job.quant);
    const int64_t           n_mine = range.layer_end - range.layer_begin;
    at::NoGradGuard         no_grad;
    LayerLoop               loop{ctx,
                   stats,
                   sel,
                   nullptr,
                   sensitivity::StatsCollector(sensitivity::stats_options(
                                     needs, job.quant.awq_samples, ctx.calib.size(0) * ctx.calib.size(1))),
                   std::vector<decompose::LayerQuant>(std::size_t(n_mine))};
    loop.defer = stats.passes > 1;
    if (layerwise(job.quant)) {
        const auto t0 = Clock::now();
        loop.seq      = std::make_unique<Sequential>(ctx, !job.quant.sequential);
        loop.stats_s += since(t0);
    }
    Progress      progress("quantize (rank 0's layers)", n_mine, "layers");
    const int64_t per_pass = parallel::layers_per_pass(range, stats.passes);
    for (int64_t k = 0; k < stats.passes; ++k) {
        const int64_t lo = range.layer_begin + std::min(n_mine, k * per_pass);
        const int64_t hi = range.layer_begin + std::min(n_mine, (k + 1) * per_pass);
        if (stats.passes > 1) loop.collect_pass(lo, hi);
        const int64_t reused_before = loop.n_reused;
        loop.pass(lo, hi);
        progress.skip(loop.n_reused - reused_before);
        if (ctx.lead()) progress.update(hi - range.layer_begin);
    }
    if (loop.seq) loop.seq->send_on();
    for (std::size_t il = 0; loop.defer && il < loop.out.size(); ++il)
        decompose::set_layer_weights(*ctx.stage, il, loop.out[il]);
    if (ctx.lead()) progress.finish();
    ctx.compute_s += loop.quantize_cpu_s;
    ctx.st.phase_s["statistics"] = stats.seconds + loop.stats_s;
    ctx.st.phase_s["prequant"]   = loop.quantize_s;
    return std::move(loop.out);
}

std::optional<std::vector<decompose::LayerQuant>> reuse_quantized(RunContext& ctx) {
    std::vector<decompose::LayerQuant> q;
    if (ctx.st.done("quantize"))  // every layer file is there (redo any that is not)
        for (int64_t l = ctx.range().layer_begin; l < ctx.range().layer_end; ++l) {
            auto lq = store::read_layer_state(ctx.out, l, ctx.fp);
            if (!lq) break;
            q.push_back(std::move(*lq));
        }
    const auto n = std::size_t(ctx.range().layer_end - ctx.range().layer_begin);
    if (!ctx.all_ranks(ctx.st.done("quantize") && q.size() == n)) return std::nullopt;
    for (std::size_t il = 0; il < q.size(); ++il)
        decompose::set_layer_weights(*ctx.stage, il, q[il]);
    return q;
}

}  // namespace rq::phases
