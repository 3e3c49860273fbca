// PQI quadrature over the pipeline (requant/sensitivity/pqi.h).
#include "requant/sensitivity/pqi.h"

#include <ATen/ATen.h>

#include "requant/dist/schedule.h"
#include "requant/io/error.h"

namespace rq::sensitivity {

Quadrature quadrature(const std::string& rule, int n) {
    if (n < 1) throw ConfigError("sensitivity.nodes must be >= 1");
    Quadrature q;
    for (int k = 0; k < n; ++k) {
        if (rule == "left")
            q.t.push_back(double(k) / n);
        else if (rule == "right")
            q.t.push_back(double(k + 1) / n);
        else if (rule == "midpoint")
            q.t.push_back((k + 0.5) / n);
        else if (rule != "trapezoid")
            throw ConfigError("sensitivity.rule '" + rule + "' (left, right, midpoint, trapezoid)");
    }
    q.weight.assign(q.t.size(), 1.0 / n);
    if (rule == "trapezoid") {
        for (int k = 0; k <= n; ++k) q.t.push_back(double(k) / n);
        q.weight.assign(q.t.size(), 1.0 / n);
        q.weight.front() = q.weight.back() = 0.5 / n;
    }
    return q;
}

PqiResult compute_pqi(model::Stage& stage, dist::Transport& t, const LinearSet& w_quant,
                      const at::Tensor& tokens, int64_t microbatch, const Quadrature& q,
                      const std::function<void(int)>& on_node) {
    auto& layers = stage.weights().layers;
    if (w_quant.size() != layers.size())
        throw ShapeError("compute_pqi: one w~ set per stage layer");
    LinearSet w0(layers.size()), grad_sum(layers.size());
    for (std::size_t il = 0; il < layers.size(); ++il)
        for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
            w0[il][i]       = layers[il].linear(model::kLinears[i]).detach().clone();
            grad_sum[il][i] = at::zeros_like(w0[il][i], at::TensorOptions().dtype(at::kDouble));
            if (w_quant[il][i].sizes() != w0[il][i].sizes())
                throw ShapeError("compute_pqi: w~ and w differ in shape");
        }
    auto set_point = [&](double tk) {  // every linear at w + t (w~ - w)
        for (std::size_t il = 0; il < layers.size(); ++il)
            for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
                at::Tensor wt =
                    w0[il][i] + (w_quant[il][i].to(w0[il][i].scalar_type()) - w0[il][i]) * tk;
                layers[il].linear(model::kLinears[i]) = wt;
            }
    };
    dist::PipelineRunner runner(stage, t, microbatch);
    PqiResult            r;
    at::Tensor           first = at::zeros({1}, at::kDouble);
    auto add_first_order       = [&] {  // gradients at w (t = 0) are in the linears' .grad()
        for (std::size_t il = 0; il < layers.size(); ++il)
            for (std::size_t i = 0; i < model::kLinears.size(); ++i)
                first += ((w_quant[il][i].to(at::kDouble) - w0[il][i].to(at::kDouble)) *
                          layers[il].linear(model::kLinears[i]).grad().to(at::kDouble))
                             .sum();
    };
    for (std::size_t k = 0; k < q.t.size(); ++k) {
        set_point(q.t[k]);
        model::enable_linear_grads(stage.weights());
        const double f = runner.forward_backward(tokens).mean();
        if (q.t[k] == 0.0) r.f_orig = f, add_first_order();
        if (q.t[k] == 1.0) r.f_quant = f;
        for (std::size_t il = 0; il < layers.size(); ++il)
            for (std::size_t i = 0; i < model::kLinears.size(); ++i)
                grad_sum[il][i].add_(layers[il].linear(model::kLinears[i]).grad().to(at::kDouble),
                                     q.weight[k]);
        if (on_node) on_node(int(k) + 1);
    }
    // F at the endpoints not visited by the rule.
    if (q.t.front() != 0.0) {  // one more pass at w: F(w) and the first-order term
        set_point(0.0);
        model::enable_linear_grads(stage.weights());
        r.f_orig = runner.forward_backward(tokens).mean();
        add_first_order();
    }
    if (q.t.back() != 1.0) set_point(1.0), r.f_quant = runner.forward(tokens).mean();
    set_point(0.0);  // leave w in place, without gradients
    for (auto& lw : layers)
        for (model::Linear l : model::kLinears) lw.linear(l) = lw.linear(l).detach();

    r.pqi.resize(layers.size());
    at::Tensor sum = at::zeros({1}, at::kDouble);
    for (std::size_t il = 0; il < layers.size(); ++il)
        for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
            const at::Tensor p =
                (w_quant[il][i].to(at::kDouble) - w0[il][i].to(at::kDouble)) * grad_sum[il][i];
            sum += p.sum();
            r.pqi[il][i] = p.to(at::kFloat);
        }
    t.allreduce_sum(sum)->wait();
    t.allreduce_sum(first)->wait();
    r.pqi_sum     = sum.item<double>();
    r.first_order = first.item<double>();
    return r;
}

}  // namespace rq::sensitivity
