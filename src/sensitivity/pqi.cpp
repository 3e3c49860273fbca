// PQI quadrature over the pipeline (requant/sensitivity/pqi.h).
// Legend: L n_layer, O out_features, I in_features.
#include "requant/sensitivity/pqi.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "requant/error.h"
#include "requant/parallel/schedule.h"
#include "requant/sensitivity/path.h"

namespace rq::sensitivity {

Quadrature quadrature(io::PqiRule rule, int n) {
    if (n < 1) throw ConfigError("sensitivity.nodes must be >= 1");
    Quadrature   q;
    const double d = 2.0 * n;  // every node is j / (2n), an exact ratio of integers
    if (rule == io::PqiRule::Trapezoid) {
        for (int k = 0; k <= n; ++k) q.t.push_back(double(2 * k) / d);
        q.weight.assign(q.t.size(), 1.0 / n);
        q.weight.front() = q.weight.back() = 0.5 / n;
    } else {
        const int off = rule == io::PqiRule::Left ? 0 : rule == io::PqiRule::Right ? 2 : 1;
        for (int k = 0; k < n; ++k) q.t.push_back(double(2 * k + off) / d);
        q.weight.assign(q.t.size(), 1.0 / n);
    }
    return q;
}

double PathSamples::integral(io::PqiRule rule, int n) const {
    const Quadrature q   = quadrature(rule, n);
    double           sum = 0;
    for (std::size_t k = 0; k < q.t.size(); ++k) {
        const auto it = std::find(t.begin(), t.end(), q.t[k]);
        if (it == t.end())
            throw ConfigError("the path was not sampled at t = " + std::to_string(q.t[k]) + " (" +
                              io::name(rule) + ", " + std::to_string(n) + " intervals)");
        sum += q.weight[k] * phi[std::size_t(it - t.begin())];
    }
    return sum;
}

at::Tensor gather_layer_table(parallel::Transport&                                       t,
                              const std::vector<std::array<double, model::kNumLinears>>& local,
                              int64_t layer_begin, int64_t n_layer) {
    at::Tensor table = at::zeros({n_layer, int64_t(model::kNumLinears)}, at::kDouble);
    auto       a     = table.accessor<double, 2>();
    for (std::size_t il = 0; il < local.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            a[layer_begin + int64_t(il)][int64_t(i)] = local[il][i];
    t.allreduce_sum(table)->wait();
    return table;
}

double table_sum(const at::Tensor& table) {
    const at::Tensor c   = table.to(at::kDouble).contiguous();
    const double*    p   = c.data_ptr<double>();
    double           sum = 0;
    for (int64_t i = 0; i < c.numel(); ++i) sum += p[i];
    return sum;
}

namespace {

// Every node to visit, ascending, each once; weight > 0 where the rule accumulates PQI.
std::vector<std::pair<double, double>> visit_order(const PqiOptions& opt) {
    std::vector<std::pair<double, double>> nodes;
    for (std::size_t k = 0; k < opt.quad.t.size(); ++k)
        nodes.emplace_back(opt.quad.t[k], opt.quad.weight[k]);
    for (double s : opt.study_t) nodes.emplace_back(s, 0.0);
    std::sort(nodes.begin(), nodes.end());
    std::vector<std::pair<double, double>> uniq;
    for (const auto& n : nodes) {
        if (!uniq.empty() && uniq.back().first == n.first)
            uniq.back().second += n.second;
        else
            uniq.push_back(n);
    }
    return uniq;
}

PqiResult pqi_on_path(model::Stage& stage, parallel::Transport& t, LinearPath& path,
                      const at::Tensor& tokens, const parallel::ScheduleOptions& schedule,
                      const PqiOptions& opt, const std::function<void(int, int)>& on_node) {
    auto&         layers = stage.weights().layers;
    const int64_t L = stage.config().n_layer, l0 = stage.range().layer_begin;
    // sum_k weight_k dF/dw(t_k), in fp32 like the gradients: over a handful of nodes fp64 adds
    // nothing measurable (README: the self-test error moves by < 1e-6) and costs 4 more bytes
    // per weight.
    model::StageTensors grad_sum(layers.size());
    for (std::size_t il = 0; il < layers.size(); ++il)
        for (std::size_t i = 0; i < model::kLinears.size(); ++i)
            grad_sum[il][i] = at::zeros(layers[il].linear(model::kLinears[i]).sizes(),
                                        at::TensorOptions().dtype(at::kFloat));
    // phi(t) = grad . dw, per (layer, linear), from the gradients now in the linears.
    auto       phi  = [&] { return table_sum(gather_layer_table(t, path.directional(), l0, L)); };
    const auto uniq = visit_order(opt);

    parallel::PipelineRunner runner(stage, t, schedule);
    PqiResult                r;
    bool                     have_orig = false, have_quant = false;
    if (on_node) on_node(0, int(uniq.size()));
    for (std::size_t k = 0; k < uniq.size(); ++k) {
        const auto [tk, wk] = uniq[k];
        path.set_all(tk, true);
        const double f  = runner.forward_backward(tokens).mean();
        const double ph = phi();
        r.path.t.push_back(tk);
        r.path.phi.push_back(ph);
        r.path.f.push_back(f);
        if (tk == 0.0) r.f_orig = f, r.first_order = ph, have_orig = true;
        if (tk == 1.0) r.f_quant = f, have_quant = true;
        if (wk > 0)
            for (std::size_t il = 0; il < layers.size(); ++il)
                for (std::size_t i = 0; i < model::kLinears.size(); ++i)
                    grad_sum[il][i].add_(layers[il].linear(model::kLinears[i]).grad(), wk);
        if (on_node) on_node(int(k) + 1, int(uniq.size()));
    }
    // The endpoints the nodes did not visit: F(w) with the first-order term, and F(w~).
    if (!have_orig) {
        path.set_all(0.0, true);
        r.f_orig      = runner.forward_backward(tokens).mean();
        r.first_order = phi();
    }
    if (!have_quant) path.set_all(1.0, false), r.f_quant = runner.forward(tokens).mean();
    path.set_all(0.0, false);  // leave w in place, without gradients

    // PQI = dw * grad_sum in fp64, one linear at a time; each accumulator is freed as its
    // PQI is formed.
    r.pqi.resize(layers.size());
    std::vector<std::array<double, model::kNumLinears>> local(layers.size());
    for (std::size_t il = 0; il < layers.size(); ++il)
        for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
            const at::Tensor acc = std::move(grad_sum[il][i]);  // freed at the end of the step
            const at::Tensor p   = path.dw(il, i).to(at::kDouble) * acc.to(at::kDouble);
            local[il][i]         = p.sum().item<double>();
            r.pqi[il][i]         = p.to(at::kFloat);
        }
    r.layer_pqi = gather_layer_table(t, local, l0, L);
    r.pqi_sum   = table_sum(r.layer_pqi);
    return r;
}

}  // namespace

PqiResult compute_pqi(model::Stage& stage, parallel::Transport& t,
                      const model::StageTensors& w_quant, const at::Tensor& tokens,
                      const parallel::ScheduleOptions& schedule, const PqiOptions& opt,
                      const std::function<void(int, int)>& on_node) {
    LinearPath path(stage, w_quant);
    return pqi_on_path(stage, t, path, tokens, schedule, opt, on_node);
}

PqiResult compute_pqi(model::Stage& stage, parallel::Transport& t,
                      const model::StageTensors& w_orig, const LinearPath::Source& w_quant,
                      const at::Tensor& tokens, const parallel::ScheduleOptions& schedule,
                      const PqiOptions& opt, const std::function<void(int, int)>& on_node) {
    LinearPath path(stage, w_orig, w_quant);
    return pqi_on_path(stage, t, path, tokens, schedule, opt, on_node);
}

}  // namespace rq::sensitivity
