// Statistics collection and base quantization of a stage (requant/pipeline/calibrate.h).
// Legend: N calibration sequences, B microbatch, T tokens, C n_embd.
#include "requant/pipeline/calibrate.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "requant/dist/schedule.h"
#include "requant/io/error.h"
#include "requant/pipeline/requant.h"
#include "requant/quant/awq.h"
#include "requant/quant/gptq.h"
#include "requant/quant/rtn.h"
#include "requant/quant/squeezellm.h"
#include "requant/requant/select.h"

namespace rq::pipeline {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

void StatsCollector::observe(int64_t layer, model::LinearInput which, const at::Tensor& x) {
    const at::Tensor x2 = x.detach().reshape({-1, x.size(-1)});  // [rows, in]
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
        const int64_t stride =
            std::max<int64_t>(1, (opt_.total_rows + opt_.max_samples - 1) / opt_.max_samples);
        const int64_t first = (stride - e.rows % stride) % stride;
        if (first < x2.size(0))
            e.samples.push_back(
                x2.narrow(0, first, x2.size(0) - first).slice(0, 0, c10::nullopt, stride).clone());
    }
    e.rows += x2.size(0);
}

const StatsCollector::Entry& StatsCollector::entry(int64_t layer, model::LinearInput which) const {
    const auto it = acc_.find({layer, int(which)});
    if (it == acc_.end())
        throw Error("no calibration statistics for layer " + std::to_string(layer));
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

bool method_needs_forward_stats(const std::string& method) {
    return method == "gptq" || method == "awq";
}

StatsOptions stats_options(const QuantSpec& spec, int64_t total_rows) {
    StatsOptions o;
    o.xtx         = spec.method == "gptq";
    o.abs_mean    = spec.method == "awq";
    o.max_samples = spec.method == "awq" ? spec.awq_samples : 0;
    o.total_rows  = total_rows;
    return o;
}

std::vector<std::array<at::Tensor, 7>> fisher_diagonal(model::Stage& stage, dist::Transport& t,
                                                       const at::Tensor& tokens) {
    model::enable_linear_grads(stage.weights());
    std::vector<std::array<at::Tensor, 7>> fisher(stage.weights().layers.size());
    for (std::size_t il = 0; il < fisher.size(); ++il)
        for (std::size_t i = 0; i < model::kLinears.size(); ++i)
            fisher[il][i] =
                at::zeros_like(stage.weights().layers[il].linear(model::kLinears[i]).detach());
    // The runner's loss is the mean over all N sequences: N * grad is the gradient of the one
    // sequence's own mean loss.
    const double n = double(tokens.size(0));
    dist::PipelineRunner(stage, t, 1).forward_backward(tokens, {}, [&](int64_t) {
        for (std::size_t il = 0; il < fisher.size(); ++il)
            for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
                at::Tensor& w = stage.weights().layers[il].linear(model::kLinears[i]);
                fisher[il][i].add_((w.grad() * n).square());
                w.mutable_grad() = at::Tensor();
            }
    });
    for (auto& lw : stage.weights().layers)
        for (model::Linear l : model::kLinears) lw.linear(l) = lw.linear(l).detach();
    return fisher;
}

SparseSelection select_sparse(const model::Stage& stage, dist::Transport& t, const QuantSpec& spec,
                              const std::vector<std::array<at::Tensor, 7>>* fisher,
                              const SparseMasks*                            outliers) {
    SparseSelection sel;
    const auto&     layers = stage.weights().layers;
    if (outliers != nullptr) {
        sel.outliers = *outliers;
    } else if (spec.outlier_select == "random" && spec.outlier_ratio > 0) {
        requant::Masks like(layers.size());
        for (std::size_t il = 0; il < layers.size(); ++il)
            for (std::size_t i = 0; i < model::kLinears.size(); ++i)
                like[il][i] = layers[il].linear(model::kLinears[i]);
        sel.outliers =
            requant::select_random(like, {}, spec.outlier_ratio, stage.range().layer_begin, 2024);
    } else if (spec.outlier_select == "fixed" && spec.outlier_ratio > 0) {
        // One rho for every linear of the model (SqueezeLLM), bisected so that the outliers
        // summed over all ranks come to outlier_ratio of the linear weights.
        std::vector<quant::IqrRule> rules;
        double                      local_n = 0;
        for (const auto& lw : layers)
            for (model::Linear l : model::kLinears) {
                rules.emplace_back(lw.linear(l));
                local_n += double(lw.linear(l).numel());
            }
        auto global = [&](double v) {
            at::Tensor x = at::tensor({v}, at::kDouble);
            t.allreduce_sum(x)->wait();
            return x.item<double>();
        };
        const double target = std::floor(spec.outlier_ratio * global(local_n));
        auto         count  = [&](double rho) {
            double c = 0;
            for (const auto& r : rules) c += double(r.count(rho));
            return global(c);
        };
        double lo = 0, hi = 1;
        while (count(hi) > target && hi < 1e6) lo = hi, hi *= 2;
        for (int it = 0; it < 50; ++it) {  // smallest rho whose count does not exceed the target
            const double mid                = 0.5 * (lo + hi);
            (count(mid) > target ? lo : hi) = mid;
        }
        sel.outliers.resize(layers.size());
        for (std::size_t il = 0, k = 0; il < layers.size(); ++il)
            for (std::size_t i = 0; i < model::kLinears.size(); ++i)
                sel.outliers[il][i] = rules[k++].mask(hi);
    } else if (spec.outlier_select != "none" && spec.outlier_ratio > 0) {
        throw ConfigError("requant.outlier_select '" + spec.outlier_select +
                          "' needs its masks from Alg. 1 (none, fixed, adaptive, random)");
    }
    if (spec.significant_select == "fisher" && spec.significant_ratio > 0) {
        if (fisher == nullptr) throw Error("significant_select = fisher needs the Fisher diagonal");
        sel.significant.resize(layers.size());
        for (std::size_t il = 0; il < layers.size(); ++il)
            for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
                at::Tensor score = (*fisher)[il][i].to(at::kDouble);
                if (!sel.outliers.empty())  // already sparse: not a candidate
                    score = score.masked_fill(sel.outliers[il][i],
                                              -std::numeric_limits<double>::infinity());
                const auto k =
                    int64_t(std::llround(spec.significant_ratio * double(score.numel())));
                sel.significant[il][i] = quant::topk_mask(score, k);
            }
    } else if (spec.significant_select != "none" && spec.significant_select != "pqi" &&
               spec.significant_select != "random" && spec.significant_ratio > 0) {
        throw ConfigError("requant.significant_select '" + spec.significant_select +
                          "' (none, fisher, pqi, random)");
    }
    return sel;
}

LayerQuant quantize_weights(const std::array<at::Tensor, 7>& w, int64_t layer,
                            const StatsCollector* stats, const std::array<at::Tensor, 7>* fisher,
                            const std::array<at::Tensor, 7>* outlier_masks,
                            const std::array<at::Tensor, 7>* significant_masks,
                            const QuantSpec& spec, std::array<at::Tensor, 7>& w_hat_out) {
    // What the dense part is fitted on: sparse weights zeroed (they are stored apart).
    std::array<at::Tensor, 7> w0, sparse, dense_in;
    for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
        w0[i]               = w[i].detach();
        const at::Tensor om = outlier_masks ? (*outlier_masks)[i] : at::Tensor();
        const at::Tensor sm = significant_masks ? (*significant_masks)[i] : at::Tensor();
        sparse[i]   = om.defined() && sm.defined() ? om.logical_or(sm) : om.defined() ? om : sm;
        dense_in[i] = sparse[i].defined() ? w0[i].masked_fill(sparse[i], 0.0) : w0[i];
    }
    LayerQuant out;
    if (spec.method == "awq") {
        if (stats == nullptr) throw Error("awq needs calibration statistics");
        // Linears that share an input share one scale vector; q/k are not clipped (AWQ).
        const std::vector<std::vector<std::size_t>> groups = {{0, 1, 2}, {3}, {4, 5}, {6}};
        for (const auto& g : groups) {
            std::vector<quant::AwqLinear> ws;
            for (std::size_t i : g) ws.push_back({dense_in[i], i >= 2});
            const auto which = model::linear_input(model::kLinears[g[0]]);
            auto       qs =
                quant::awq_quantize(ws, stats->samples(layer, which), stats->abs_mean(layer, which),
                                    {spec.bits, spec.group_size, spec.awq_grid});
            for (std::size_t k = 0; k < g.size(); ++k) out[g[k]].dense = std::move(qs[k]);
        }
    }
    for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
        const model::Linear l = model::kLinears[i];
        if (spec.method == "rtn") {
            out[i].dense = quant::rtn_quantize(dense_in[i], {spec.bits, spec.group_size});
        } else if (spec.method == "gptq") {
            if (stats == nullptr) throw Error("gptq needs calibration statistics");
            out[i].dense = quant::gptq_quantize(
                dense_in[i], stats->xtx(layer, model::linear_input(l)),
                {spec.bits, spec.group_size, spec.damp, spec.act_order, spec.block_size});
        } else if (spec.method == "squeezellm") {
            if (fisher == nullptr) throw Error("squeezellm needs the Fisher diagonal");
            at::Tensor f = (*fisher)[i];
            if (sparse[i].defined()) f = f.masked_fill(sparse[i], 0.0);  // no pull on centroids
            out[i].dense =
                quant::squeezellm_quantize(dense_in[i], f, {spec.bits, spec.kmeans_iters});
        } else if (spec.method != "awq") {
            throw ConfigError("unknown quant.method '" + spec.method + "'");
        }
        const at::Tensor residual = w0[i].to(at::kFloat) - quant::dequantize(out[i].dense);
        if (outlier_masks && (*outlier_masks)[i].defined())
            out[i].outliers = quant::csr_from_mask(residual, (*outlier_masks)[i]);
        if (significant_masks && (*significant_masks)[i].defined())
            out[i].significant = quant::csr_from_mask(residual, (*significant_masks)[i]);
        w_hat_out[i] = reconstruct(out[i]).to(w0[i].scalar_type());
    }
    return out;
}

at::Tensor reconstruct(const LinearQuant& q) {
    at::Tensor w = quant::dequantize(q.dense);
    if (q.outliers.indptr.defined()) w = w + quant::csr_to_dense(q.outliers);
    if (q.significant.indptr.defined()) w = w + quant::csr_to_dense(q.significant);
    return w;
}

void set_layer_weights(model::Stage& stage, std::size_t il, const LayerQuant& q) {
    auto& lw = stage.weights().layers.at(il);
    for (std::size_t i = 0; i < model::kLinears.size(); ++i)
        lw.linear(model::kLinears[i]) =
            reconstruct(q[i]).to(lw.linear(model::kLinears[i]).scalar_type());
}

LayerQuant quantize_layer(model::Stage& stage, int64_t layer, const StatsCollector* stats,
                          const std::array<at::Tensor, 7>* fisher,
                          const std::array<at::Tensor, 7>* outlier_masks,
                          const std::array<at::Tensor, 7>* significant_masks,
                          const QuantSpec&                 spec) {
    auto& lw = stage.weights().layers.at(std::size_t(layer - stage.range().layer_begin));
    std::array<at::Tensor, 7> w, w_hat;
    for (std::size_t i = 0; i < model::kLinears.size(); ++i) w[i] = lw.linear(model::kLinears[i]);
    LayerQuant q =
        quantize_weights(w, layer, stats, fisher, outlier_masks, significant_masks, spec, w_hat);
    for (std::size_t i = 0; i < model::kLinears.size(); ++i)
        lw.linear(model::kLinears[i]) = w_hat[i];
    return q;
}

std::vector<LayerQuant> calibrate_and_quantize(model::Stage& stage, dist::Transport& t,
                                               const at::Tensor& tokens, int64_t microbatch,
                                               const QuantSpec& spec, CalibrationTimes& times,
                                               const LayerHooks& hooks, nlohmann::json* report) {
    const auto& range = stage.range();
    const bool  needs = method_needs_forward_stats(spec.method);
    auto        load  = [&](int64_t l) { return hooks.load ? hooks.load(l) : std::nullopt; };
    std::vector<LayerQuant> out;
    StatsCollector          stats(stats_options(spec, tokens.size(0) * tokens.size(1)));
    std::vector<std::array<at::Tensor, 7>> fisher;

    if (spec.method == "squeezellm" || spec.significant_select == "fisher") {
        const auto t0 = Clock::now();  // gradients of the full-precision model
        fisher        = fisher_diagonal(stage, t, tokens);
        times.statistics_s += since(t0);
    }
    SparseMasks adaptive;
    if (spec.outlier_select == "adaptive" && spec.outlier_ratio > 0) {
        const auto     t0 = Clock::now();
        nlohmann::json r;
        adaptive = adaptive_outliers(stage, t, tokens, microbatch, spec,
                                     fisher.empty() ? nullptr : &fisher, r);
        if (report) (*report).update(r);
        times.outliers_s += since(t0);
    }
    const SparseSelection sel = select_sparse(stage, t, spec, fisher.empty() ? nullptr : &fisher,
                                              adaptive.empty() ? nullptr : &adaptive);
    auto                  masks_of = [](const SparseMasks& m, int64_t i) {
        return m.empty() ? nullptr : &m[std::size_t(i)];
    };
    at::NoGradGuard no_grad;
    if (!needs || !spec.sequential) {
        if (needs) {  // one full-precision pass collects every layer's statistics
            const auto t0 = Clock::now();
            stage.set_observer(&stats);
            dist::PipelineRunner(stage, t, microbatch).forward(tokens);
            stage.set_observer(nullptr);
            times.statistics_s += since(t0);
        }
        const auto t0 = Clock::now();
        for (int64_t l = range.layer_begin; l < range.layer_end; ++l) {
            const int64_t i = l - range.layer_begin;
            const auto*   f = fisher.empty() ? nullptr : &fisher[std::size_t(i)];
            if (auto done = load(l)) {
                set_layer_weights(stage, std::size_t(i), *done);
                out.push_back(std::move(*done));
            } else {
                out.push_back(quantize_layer(stage, l, needs ? &stats : nullptr, f,
                                             masks_of(sel.outliers, i),
                                             masks_of(sel.significant, i), spec));
            }
            if (hooks.saved) hooks.saved(i + 1, l, out.back());
        }
        times.quantize_s += since(t0);
        return out;
    }

    // Sequential: this rank's input hidden states for all microbatches, then layer by layer.
    const int               r = t.rank(), P = t.size();
    const int64_t           N = tokens.size(0), T = tokens.size(1);
    const int64_t           M = (N + microbatch - 1) / microbatch;
    std::vector<at::Tensor> x(static_cast<std::size_t>(M));
    for (int64_t m = 0; m < M; ++m) {
        const int64_t b = std::min(microbatch, N - m * microbatch);
        if (r == 0) {
            x[std::size_t(m)] = stage.embed_tokens(tokens.narrow(0, m * microbatch, b));
        } else {
            x[std::size_t(m)] =
                at::empty({b, T, stage.config().n_embd}, at::TensorOptions().dtype(stage.dtype()));
            t.recv(x[std::size_t(m)], r - 1, int(m % 16000) * 2)->wait();
        }
    }
    for (int64_t l = range.layer_begin; l < range.layer_end; ++l) {
        const int64_t i  = l - range.layer_begin;
        auto          t0 = Clock::now();
        if (auto done = load(l)) {
            set_layer_weights(stage, std::size_t(i), *done);
            out.push_back(std::move(*done));
        } else {
            stats.clear();
            stage.set_observer(&stats);
            for (const auto& xm : x) stage.forward_layer(l, xm);
            stage.set_observer(nullptr);
            times.statistics_s += since(t0);
            t0 = Clock::now();
            out.push_back(quantize_layer(stage, l, &stats, nullptr, masks_of(sel.outliers, i),
                                         masks_of(sel.significant, i), spec));
            times.quantize_s += since(t0);
        }
        t0 = Clock::now();
        for (auto& xm : x) xm = stage.forward_layer(l, xm);  // through the quantized layer
        times.statistics_s += since(t0);
        if (hooks.saved) hooks.saved(i + 1, l, out.back());
    }
    if (r < P - 1) {
        std::vector<std::unique_ptr<dist::Work>> sends;
        for (int64_t m = 0; m < M; ++m)
            sends.push_back(t.send(x[std::size_t(m)].contiguous(), r + 1, int(m % 16000) * 2));
        for (auto& s : sends) s->wait();
    }
    return out;
}

}  // namespace rq::pipeline
