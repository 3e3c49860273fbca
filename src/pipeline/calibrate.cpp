// Statistics collection and base quantization of a stage (requant/pipeline/calibrate.h).
// Legend: N calibration sequences, B microbatch, T tokens, C n_embd.
#include "requant/pipeline/calibrate.h"

#include <ATen/ATen.h>

#include <chrono>

#include "requant/dist/schedule.h"
#include "requant/io/error.h"
#include "requant/quant/gptq.h"
#include "requant/quant/rtn.h"

namespace rq::pipeline {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

void HessianCollector::observe(int64_t layer, model::LinearInput which, const at::Tensor& x) {
    const at::Tensor x2 = x.detach().reshape({-1, x.size(-1)});  // [rows, in]
    Entry&           e  = acc_[{layer, int(which)}];
    const at::Tensor g  = x2.t().matmul(x2).to(at::kDouble);  // fp32 GEMM, fp64 running sum
    if (!e.xtx.defined())
        e.xtx = g;
    else
        e.xtx.add_(g);
    e.rows += x2.size(0);
}

const at::Tensor& HessianCollector::xtx(int64_t layer, model::LinearInput which) const {
    const auto it = acc_.find({layer, int(which)});
    if (it == acc_.end())
        throw Error("no calibration statistics for layer " + std::to_string(layer));
    return it->second.xtx;
}

int64_t HessianCollector::n_rows(int64_t layer, model::LinearInput which) const {
    const auto it = acc_.find({layer, int(which)});
    return it == acc_.end() ? 0 : it->second.rows;
}

bool method_needs_hessian(const std::string& method) {
    return method == "gptq";
}

LayerQuant quantize_layer(model::Stage& stage, int64_t layer, const HessianCollector* stats,
                          const QuantSpec& spec) {
    auto&      lw = stage.weights().layers.at(std::size_t(layer - stage.range().layer_begin));
    LayerQuant out;
    for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
        const model::Linear l = model::kLinears[i];
        at::Tensor&         w = lw.linear(l);
        if (spec.method == "rtn") {
            out[i] = quant::rtn_quantize(w.detach(), {spec.bits, spec.group_size});
        } else if (spec.method == "gptq") {
            if (stats == nullptr) throw Error("gptq needs calibration statistics");
            out[i] = quant::gptq_quantize(
                w.detach(), stats->xtx(layer, model::linear_input(l)),
                {spec.bits, spec.group_size, spec.damp, spec.act_order, spec.block_size});
        } else {
            throw ConfigError("quant.method '" + spec.method +
                              "' is not available yet (rtn, gptq)");
        }
        w = quant::dequantize(out[i]).to(w.scalar_type());
    }
    return out;
}

std::vector<LayerQuant> calibrate_and_quantize(model::Stage& stage, dist::Transport& t,
                                               const at::Tensor& tokens, int64_t microbatch,
                                               const QuantSpec& spec, CalibrationTimes& times,
                                               const std::function<void(int64_t)>& on_layer) {
    const auto&             range = stage.range();
    const bool              needs = method_needs_hessian(spec.method);
    std::vector<LayerQuant> out;
    HessianCollector        stats;
    at::NoGradGuard         no_grad;

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
            out.push_back(quantize_layer(stage, l, needs ? &stats : nullptr, spec));
            if (on_layer) on_layer(l - range.layer_begin + 1);
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
        auto t0 = Clock::now();
        stats.clear();
        stage.set_observer(&stats);
        for (const auto& xm : x) stage.forward_layer(l, xm);
        stage.set_observer(nullptr);
        times.statistics_s += since(t0);
        t0 = Clock::now();
        out.push_back(quantize_layer(stage, l, &stats, spec));
        times.quantize_s += since(t0);
        t0 = Clock::now();
        for (auto& xm : x) xm = stage.forward_layer(l, xm);  // through the quantized layer
        times.statistics_s += since(t0);
        if (on_layer) on_layer(l - range.layer_begin + 1);
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
