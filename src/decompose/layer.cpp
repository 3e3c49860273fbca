// One decoder layer decomposed into dense + sparse parts (requant/decompose/layer.h).
#include "requant/decompose/layer.h"

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "requant/error.h"

namespace rq::decompose {
namespace {

// The linears (indices into kLinears) that read each model::LinearInput, in that order.
const std::array<std::vector<std::size_t>, 4> kInputGroups = {{{0, 1, 2}, {3}, {4, 5}, {6}}};
// AWQ quantizes o and down first: their input scales fold into the rows of v and up (the
// linears whose outputs they read), which need them before their clipping search.
constexpr std::array<std::size_t, 4> kAwqOrder   = {1, 3, 0, 2};
constexpr std::array<std::size_t, 4> kInputOrder = {0, 1, 2, 3};

// AWQ: the input scale of the linear reading linear i's output, to fold into i's rows: o_proj's
// for v_proj, down_proj's for up_proj (undefined where that linear has none, e.g. o on GQA).
at::Tensor folded_row_scale(const LayerQuant& out, std::size_t i) {
    if (model::kLinears[i] == model::Linear::V)
        return out[std::size_t(model::Linear::O)].dense.in_scale;
    if (model::kLinears[i] == model::Linear::Up)
        return out[std::size_t(model::Linear::Down)].dense.in_scale;
    return {};
}

bool sparse_empty(const quant::LinearQuant& q) {
    return q.outliers.nnz() == 0 && q.significant.nnz() == 0;
}

std::string group_names(const std::vector<std::size_t>& g) {
    std::string s;
    for (std::size_t i : g)
        s += (s.empty() ? "" : "/") + std::string(model::linear_name(model::kLinears[i]));
    return s;
}

// |A X|^2 summed over the calibration rows, from H = X^T X (float [I, I]) or the rows X itself.
double output_energy(const at::Tensor& a, const at::Tensor& h, const at::Tensor& rows) {
    if (h.defined()) return (a.matmul(h) * a).sum().item<double>();  // tr(A H A^T)
    return rows.matmul(a.t()).square().sum().item<double>();
}

LinearErrors linear_errors(const quant::Quantizer& m, const at::Tensor& w,
                           const at::Tensor& w_dense, const at::Tensor& w_hat, bool has_sparse,
                           const quant::InputStats& in, const at::Tensor& h,
                           const at::Tensor& fisher) {
    LinearErrors     e;
    const at::Tensor wf = w.to(at::kFloat), dd = wf - w_dense, df = wf - w_hat;
    const double     ww = wf.square().sum().item<double>();
    e.weight_dense      = dd.square().sum().item<double>() / ww;
    e.weight            = has_sparse ? df.square().sum().item<double>() / ww : e.weight_dense;
    double num_dense = NAN, num = NAN;
    if (h.defined() || in.samples.defined()) {
        const double wx = output_energy(wf, h, in.samples);
        num_dense       = output_energy(dd, h, in.samples);
        num             = has_sparse ? output_energy(df, h, in.samples) : num_dense;
        e.proxy_dense   = num_dense / wx;
        e.proxy         = num / wx;
    }
    // GPTQ's and QTIP's objective tr(dW H dW^T) is the numerator just computed: no second pass.
    const bool from_proxy = m.objective_is_proxy && h.defined();
    e.objective_dense     = from_proxy ? num_dense : m.objective(wf, w_dense, in, fisher);
    e.objective           = !has_sparse  ? e.objective_dense
                            : from_proxy ? num
                                         : m.objective(wf, w_hat, in, fisher);
    return e;
}

// AWQ's block-output losses (llm-awq auto_scale.py), summed over every calibration token in
// fp64: q/k/v by the attention output (through RoPE, softmax and o_proj), gate/up by the MLP
// output, each on the block's input rows (float [N, T, C]) with the rest of the block at W;
// o_proj and down_proj by their own outputs, tr(dW H dW^T), H = X^T X of every token. The
// weights stored apart keep their W values (the reconstruction's). Sequences go through in
// chunks of about kLossChunk tokens.
constexpr int64_t kLossChunk = 8192;

struct BlockLossInputs {
    const at::Tensor*         rows   = nullptr;  // float [N, T, C]
    const model::LlamaConfig* config = nullptr;
    model::LayerWeights       w;  // float, the layer's linears at W
};

quant::BlockLoss block_loss(model::LinearInput which, const BlockLossInputs& in,
                            const std::vector<std::size_t>& idx,
                            const std::vector<at::Tensor>& sparse, const at::Tensor& xtx) {
    std::vector<at::Tensor> w;  // float [O_k, I]: the group's linears at W
    for (std::size_t i : idx) w.push_back(in.w.linear(model::kLinears[i]));
    if (which == model::LinearInput::AttnOut || which == model::LinearInput::MlpOut) {
        if (!xtx.defined()) return {};
        return [w, sparse, xtx](const std::vector<at::Tensor>& w_hat) {
            double e = 0;
            for (std::size_t k = 0; k < w.size(); ++k) {
                const at::Tensor wk =
                    sparse[k].defined() ? at::where(sparse[k], w[k], w_hat[k]) : w_hat[k];
                const at::Tensor d = wk.to(at::kDouble) - w[k].to(at::kDouble);
                e += (d.matmul(xtx) * d).sum().item<double>();
            }
            return e;
        };
    }
    if (in.rows == nullptr || !in.rows->defined() || in.config == nullptr) return {};
    const at::Tensor         x = *in.rows;
    const int64_t            T = x.size(1), chunk = std::max<int64_t>(1, kLossChunk / T);
    const model::RopeTables  rope = model::rope_tables(*in.config, T, at::kFloat);
    const model::LlamaConfig c    = *in.config;
    const bool               attn = which == model::LinearInput::Attn;
    auto block = [attn, c, rope](const at::Tensor& xb, const model::LayerWeights& lw) {
        return attn ? model::attention(xb, lw, c, rope) : model::mlp(xb, lw);
    };
    std::vector<at::Tensor> y;  // float [b, T, C]: the block's output at W, per chunk
    for (int64_t n0 = 0; n0 < x.size(0); n0 += chunk)
        y.push_back(block(x.narrow(0, n0, std::min(chunk, x.size(0) - n0)), in.w));
    return [x, y, block, chunk, lw = in.w, idx, sparse, w](const std::vector<at::Tensor>& w_hat) {
        model::LayerWeights q = lw;
        for (std::size_t k = 0; k < idx.size(); ++k)
            q.linear(model::kLinears[idx[k]]) =
                sparse[k].defined() ? at::where(sparse[k], w[k], w_hat[k]) : w_hat[k];
        double e = 0;
        for (std::size_t j = 0; j < y.size(); ++j) {
            const int64_t    n0 = int64_t(j) * chunk;
            const at::Tensor d  = block(x.narrow(0, n0, y[j].size(0)), q) - y[j];
            e += d.to(at::kDouble).square().sum().item<double>();
        }
        return e;
    };
}

}  // namespace

LayerStats layer_stats(const sensitivity::StatsCollector* stats, int64_t layer,
                       const model::LayerTensors* fisher) {
    LayerStats s;
    s.fisher = fisher;
    if (stats != nullptr)
        for (std::size_t k = 0; k < kInputGroups.size(); ++k)
            s.inputs[k] = stats->input(layer, model::LinearInput(k));
    return s;
}

LayerQuant quantize_weights(const model::LayerTensors& w, int64_t layer, const LayerStats& stats,
                            const model::LayerTensors* outlier_masks,
                            const model::LayerTensors* significant_masks, const io::JobQuant& p,
                            model::LayerTensors& w_hat_out, LayerErrors* errors,
                            const InputSet& only) {
    const quant::Quantizer& method = quant::quantizer(p.method);
    // The weights and the masks of those stored apart; kept: where the method left them.
    model::LayerTensors w0, sparse, kept;
    LayerQuant          out;
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        w0[i]               = w[i].detach();
        const at::Tensor om = outlier_masks ? (*outlier_masks)[i] : at::Tensor();
        const at::Tensor sm = significant_masks ? (*significant_masks)[i] : at::Tensor();
        sparse[i] = om.defined() && sm.defined() ? om.logical_or(sm) : om.defined() ? om : sm;
    }
    const bool awq_block = p.method == io::QuantMethod::Awq && p.awq_loss == io::AwqLoss::Block;
    BlockLossInputs bl;  // AWQ's block losses
    if (awq_block) {
        bl.config = stats.config;
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            bl.w.linear(model::kLinears[i]) = w0[i].to(at::kFloat);
    }
    const bool awq = p.method == io::QuantMethod::Awq;
    for (std::size_t k : awq ? kAwqOrder : kInputOrder) {
        if (!only[k]) continue;
        const auto&       idx = kInputGroups[k];
        quant::InputGroup g;
        g.in = stats.inputs[k];
        // AWQ's v -> o scale exists only where v_proj and o_proj have one shape (not GQA).
        const auto v = std::size_t(model::Linear::V), o = std::size_t(model::Linear::O);
        g.scale =
            model::LinearInput(k) != model::LinearInput::AttnOut || w[v].sizes() == w[o].sizes();
        for (std::size_t i : idx) {
            g.w.push_back(w0[i]);
            g.sparse.push_back(sparse[i]);
            g.clip.push_back(i >= 2);  // AWQ: q and k are not clipped
            const at::Tensor r = awq ? folded_row_scale(out, i) : at::Tensor();
            g.row_scale.push_back(r.defined() ? r.to(at::kFloat) : r);
            g.ids.push_back(uint64_t(layer) * model::kNumLinears + i);
            if (method.needs.fisher && stats.fisher != nullptr) {  // missing: the method says so
                const at::Tensor& f = (*stats.fisher)[i];
                g.fisher.push_back(sparse[i].defined() ? f.masked_fill(sparse[i], 0.0) : f);
            }
        }
        try {  // errors gain the layer and the linears here
            if (awq_block) {
                bl.rows = &g.in.rows;
                g.loss  = block_loss(model::LinearInput(k), bl, idx, g.sparse, g.in.xtx);
            }
            auto dense = method.quantize(g, p);
            for (std::size_t j = 0; j < idx.size(); ++j) {
                out[idx[j]].dense = std::move(dense[j].q);
                kept[idx[j]]      = std::move(dense[j].kept);
            }
        } catch (Error& e) {
            e.add_context("layer " + std::to_string(layer) + " " + group_names(idx));
            throw;
        }
    }
    model::LayerTensors w_dense;  // dequant(dense), kept for the errors
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        if (!only[std::size_t(model::linear_input(model::kLinears[i]))]) {
            w_hat_out[i] = w0[i];
            continue;
        }
        w_dense[i]                = quant::dequantize(out[i].dense);
        const at::Tensor stored   = kept[i].defined() ? kept[i] : w0[i].to(at::kFloat);
        const at::Tensor residual = stored - w_dense[i];
        if (outlier_masks && (*outlier_masks)[i].defined())
            out[i].outliers = quant::csr_from_mask(residual, (*outlier_masks)[i]);
        if (significant_masks && (*significant_masks)[i].defined())
            out[i].significant = quant::csr_from_mask(residual, (*significant_masks)[i]);
        w_hat_out[i] = quant::reconstruct(out[i]).to(w0[i].scalar_type());
        if (!errors) w_dense[i] = at::Tensor();
    }
    // X^T X in float, one input at a time (the largest is [F, F]), for the errors.
    for (std::size_t k = 0; errors && k < kInputGroups.size(); ++k) {
        if (!only[k]) continue;
        const quant::InputStats& in = stats.inputs[k];
        const at::Tensor         h  = in.xtx.defined() ? in.xtx.to(at::kFloat) : at::Tensor();
        for (std::size_t i : kInputGroups[k]) {
            const at::Tensor f = stats.fisher ? (*stats.fisher)[i] : at::Tensor();
            (*errors)[i] = linear_errors(method, w0[i], w_dense[i], w_hat_out[i].to(at::kFloat),
                                         !sparse_empty(out[i]), in, h, f);
        }
    }
    return out;
}

LayerQuant quantize_layer(model::Stage& stage, int64_t layer, const LayerStats& stats,
                          const model::LayerTensors* outlier_masks,
                          const model::LayerTensors* significant_masks, const io::JobQuant& p,
                          LayerErrors* errors, const InputSet& only) {
    auto& lw = stage.weights().layers.at(std::size_t(layer - stage.range().layer_begin));
    model::LayerTensors w, w_hat;
    for (std::size_t i = 0; i < model::kNumLinears; ++i) w[i] = lw.linear(model::kLinears[i]);
    LayerQuant q =
        quantize_weights(w, layer, stats, outlier_masks, significant_masks, p, w_hat, errors, only);
    for (std::size_t i = 0; i < model::kNumLinears; ++i) lw.linear(model::kLinears[i]) = w_hat[i];
    return q;
}

void set_layer_weights(model::Stage& stage, std::size_t il, const LayerQuant& q) {
    auto& lw = stage.weights().layers.at(il);
    for (std::size_t i = 0; i < model::kNumLinears; ++i)
        lw.linear(model::kLinears[i]) =
            quant::reconstruct(q[i]).to(lw.linear(model::kLinears[i]).scalar_type());
}

model::StageTensors stage_linears(const model::Stage& s) {
    model::StageTensors out(s.weights().layers.size());
    for (std::size_t il = 0; il < out.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            out[il][i] = s.weights().layers[il].linear(model::kLinears[i]).detach().clone();
    return out;
}

void set_stage_linears(model::Stage& s, const model::StageTensors& w) {
    for (std::size_t il = 0; il < w.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            s.weights().layers[il].linear(model::kLinears[i]) =
                w[il][i].to(s.dtype(), false, /*copy=*/true);
}

}  // namespace rq::decompose
