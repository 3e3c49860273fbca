// The table of base quantizers (requant/quant/quantizer.h): each row adapts one method's own
// function to the common interface and names its statistics and its objective.
#include "requant/quant/quantizer.h"

#include <ATen/ATen.h>

#include "requant/error.h"
#include "requant/quant/awq.h"
#include "requant/quant/gptq.h"
#include "requant/quant/qtip.h"
#include "requant/quant/rtn.h"
#include "requant/quant/squeezellm.h"

namespace rq::quant {
namespace {

at::Tensor diff(const at::Tensor& w, const at::Tensor& w_hat) {  // double [O, I]
    return w.to(at::kDouble) - w_hat.to(at::kDouble);
}
// Linear k's weights with its sparse ones zeroed: what most methods fit the dense part on.
at::Tensor zeroed(const InputGroup& g, std::size_t k) {
    const bool masked = k < g.sparse.size() && g.sparse[k].defined();
    return masked ? g.w[k].masked_fill(g.sparse[k], 0.0) : g.w[k];
}
std::vector<DenseFit> fits(std::vector<QuantizedLinear> qs) {
    std::vector<DenseFit> out;
    for (auto& q : qs) out.push_back({std::move(q), at::Tensor()});
    return out;
}
template <class F>
std::vector<DenseFit> each(const InputGroup& g, F&& f) {
    std::vector<QuantizedLinear> out;
    for (std::size_t k = 0; k < g.w.size(); ++k) out.push_back(f(k));
    return fits(std::move(out));
}

// RTN: the rounding error itself, sum dW^2.
std::vector<DenseFit> rtn(const InputGroup& g, const io::JobQuant& p) {
    return each(g, [&](std::size_t k) {
        return rtn_quantize(zeroed(g, k), {p.bits, p.group_size});
    });
}
std::vector<DenseFit> rtn_ref(const InputGroup& g, const io::JobQuant& p) {
    return each(g, [&](std::size_t k) {
        return rtn_quantize_ref(zeroed(g, k), {p.bits, p.group_size});
    });
}
double rtn_objective(const at::Tensor& w, const at::Tensor& w_hat, const InputStats&,
                     const at::Tensor&) {
    return diff(w, w_hat).square().sum().item<double>();
}

// GPTQ: the output error on the calibration inputs, tr(dW H dW^T) with H = X^T X. The sparse
// weights stay in, at the values GPTQ's error feedback gives them (SpQR).
std::vector<DenseFit> gptq(const InputGroup& g, const io::JobQuant& p) {
    if (!g.in.xtx.defined()) throw InternalError("gptq: X^T X was not collected");
    std::vector<DenseFit> out;
    for (std::size_t k = 0; k < g.w.size(); ++k) {
        const at::Tensor sparse = k < g.sparse.size() ? g.sparse[k] : at::Tensor();
        DenseFit         f;
        f.q = gptq_quantize(
            g.w[k], g.in.xtx,
            {p.bits, p.group_size, p.damp, p.act_order, p.block_size, p.static_groups}, sparse,
            sparse.defined() ? &f.kept : nullptr);
        out.push_back(std::move(f));
    }
    return out;
}
double gptq_objective(const at::Tensor& w, const at::Tensor& w_hat, const InputStats& in,
                      const at::Tensor&) {
    const at::Tensor d = diff(w, w_hat);
    return (d.matmul(in.xtx) * d).sum().item<double>();
}

// AWQ: one input scale for the linears that share the input, searched on the group's block
// loss (g.loss) or else on the output error |dW X^T|^2 on the sampled input rows.
std::vector<DenseFit> awq(const InputGroup& g, const io::JobQuant& p) {
    if (!g.in.samples.defined() || !g.in.abs_mean.defined())
        throw InternalError("awq: the input statistics were not collected");
    std::vector<AwqLinear> ws;
    for (std::size_t k = 0; k < g.w.size(); ++k)
        ws.push_back(
            {zeroed(g, k), g.clip.at(k), k < g.row_scale.size() ? g.row_scale[k] : at::Tensor()});
    AwqParams a;
    a.bits       = p.bits;
    a.group_size = p.group_size;
    a.grid       = p.awq_grid;
    a.scale      = g.scale;
    return fits(awq_quantize(ws, g.in.samples, g.in.abs_mean, a, g.loss));
}
double awq_objective(const at::Tensor& w, const at::Tensor& w_hat, const InputStats& in,
                     const at::Tensor&) {
    return in.samples.to(at::kDouble).matmul(diff(w, w_hat).t()).square().sum().item<double>();
}

// SqueezeLLM: Fisher-weighted k-means per row; sum F dW^2.
}  // namespace

StatsNeeds stats_needs(const io::JobQuant& p) {
    StatsNeeds n = quantizer(p.method).needs;
    if (p.method == io::QuantMethod::Awq && p.awq_loss == io::AwqLoss::Block) n.xtx = n.rows = true;
    return n;
}

SqueezeParams squeeze_params(const io::JobQuant& p) {
    SqueezeParams s;
    s.bits  = p.bits;
    s.iters = p.kmeans_iters;
    s.start = p.kmeans_init == io::KmeansInit::Multistart ? KmeansStart::Multistart
                                                          : KmeansStart::PlusPlus;
    s.seed  = uint64_t(p.kmeans_seed);
    return s;
}

namespace {
std::vector<DenseFit> squeezellm(const InputGroup& g, const io::JobQuant& p) {
    if (g.fisher.size() != g.w.size())
        throw InternalError("squeezellm: the Fisher diagonal was not collected");
    return each(g, [&](std::size_t k) {
        return squeezellm_quantize(zeroed(g, k), g.fisher[k], squeeze_params(p));
    });
}
double squeezellm_objective(const at::Tensor& w, const at::Tensor& w_hat, const InputStats&,
                            const at::Tensor& fisher) {
    return (fisher.to(at::kDouble) * diff(w, w_hat).square()).sum().item<double>();
}

// QTIP: trellis-coded tiles of the incoherent weight, BlockLDLQ on H = X^T X; scored like
// GPTQ. Each linear's signs are seeded by the job's seed and the linear's place in the model.
TrellisCode trellis_code(io::QtipCode c) {
    switch (c) {
        case io::QtipCode::Hyb:
            return TrellisCode::Hyb;
        case io::QtipCode::OneMad:
            return TrellisCode::OneMad;
        case io::QtipCode::ThreeInst:
            return TrellisCode::ThreeInst;
    }
    throw InternalError("qtip: unknown code");
}
std::vector<DenseFit> qtip(const InputGroup& g, const io::JobQuant& p) {
    if (!g.in.xtx.defined()) throw InternalError("qtip: X^T X was not collected");
    return each(g, [&](std::size_t k) {
        QtipParams q;
        q.code            = trellis_code(p.qtip_code);
        q.damp            = p.damp;
        q.factor_seed     = uint64_t(p.qtip_seed);
        const uint64_t id = k < g.ids.size() ? g.ids[k] : k;
        q.sign_seed       = (uint64_t(p.qtip_seed) << 40) ^ id;
        return qtip_quantize(zeroed(g, k), g.in.xtx, p.bits, q);
    });
}

}  // namespace

const std::vector<Quantizer>& quantizers() {
    // clang-format off
    static const std::vector<Quantizer> table = {
        // method                      needs: xtx, abs_mean, samples, fisher
        {io::QuantMethod::Rtn,        {false, false, false, false}, rtn,        rtn_ref,
         rtn_objective,        "sum dW^2", false},
        {io::QuantMethod::Gptq,       {true,  false, false, false}, gptq,       nullptr,
         gptq_objective,       "tr(dW H dW^T), H = X^T X", true},
        {io::QuantMethod::Awq,        {false, true,  true,  false}, awq,        nullptr,
         awq_objective,        "|dW X^T|^2 on the sampled input rows", false},
        {io::QuantMethod::SqueezeLlm, {false, false, false, true},  squeezellm, nullptr,
         squeezellm_objective, "sum F dW^2, F the Fisher diagonal", false},
        {io::QuantMethod::Qtip,       {true,  false, false, false}, qtip,       nullptr,
         gptq_objective,       "tr(dW H dW^T), H = X^T X", true},
    };
    // clang-format on
    return table;
}

const Quantizer& quantizer(io::QuantMethod m) {
    for (const auto& q : quantizers())
        if (q.method == m) return q;
    throw InternalError(std::string("no quantizer registered for ") + io::name(m));
}

}  // namespace rq::quant
