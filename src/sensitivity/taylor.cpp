// Taylor terms and actual loss changes across the pipeline (requant/sensitivity/taylor.h).
// Legend: L n_layer, B microbatch sequences, T tokens.
#include "requant/sensitivity/taylor.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include "requant/error.h"
#include "requant/parallel/schedule.h"
#include "requant/sensitivity/path.h"

namespace rq::sensitivity {
namespace {

double row_sum(const std::array<double, model::kNumLinears>& r) {
    double s = 0;
    for (double v : r) s += v;
    return s;
}

}  // namespace

double TaylorResult::first_total() const {
    return table_sum(first_order);
}
double TaylorResult::second_total() const {
    double s = 0;
    for (double v : layer_second) s += v;
    return s;
}

TaylorResult taylor_study(model::Stage& stage, parallel::Transport& t,
                          const model::StageTensors& w_quant, const at::Tensor& tokens,
                          const parallel::ScheduleOptions& schedule, const TaylorOptions& opt,
                          const std::function<void(int, int)>& on_pass) {
    const int64_t            L = stage.config().n_layer, l0 = stage.range().layer_begin;
    const int64_t            n_local = int64_t(stage.weights().layers.size());
    LinearPath               p(stage, w_quant);
    parallel::PipelineRunner runner(stage, t, schedule);
    int                      lambda_passes = 0;
    for (double l : opt.lambdas) lambda_passes += l != 1.0;
    const int total = 1 + 2 * int(L + 1) + int(L) + 1 + lambda_passes;
    int       done  = 0;
    auto      tick  = [&] {
        if (on_pass) on_pass(++done, total);
    };
    const auto none = [](int64_t) { return false; };
    const auto mine = [&](int64_t layer) { return layer >= l0 && layer < l0 + n_local; };

    if (on_pass) on_pass(0, total);
    TaylorResult r;
    // First order: the gradient at w, per (layer, linear).
    p.set_all(0.0, true);
    r.f_orig      = runner.forward_backward(tokens).mean();
    r.first_order = gather_layer_table(t, p.directional(), l0, L);
    tick();

    // Second order per layer: v = dw on layer l only, central difference of v . g.
    const double                                        eps = opt.hvp_eps;
    std::vector<std::array<double, model::kNumLinears>> second(static_cast<std::size_t>(n_local));
    for (int64_t layer = 0; layer < L; ++layer) {
        double d[2] = {0, 0};
        for (int side = 0; side < 2; ++side) {
            const double  s  = side == 0 ? eps : -eps;
            const int64_t il = layer - l0;
            p.set([&](int64_t j) { return j == il ? s : 0.0; }, [&](int64_t j) { return j == il; });
            runner.forward_backward(tokens);
            if (mine(layer)) d[side] = row_sum(p.directional(std::size_t(il)));
            tick();
        }
        if (mine(layer)) second[std::size_t(layer - l0)][0] = 0.5 * (d[0] - d[1]) / (2 * eps);
    }
    const at::Tensor sec = gather_layer_table(t, second, l0, L).select(1, 0).contiguous();
    r.layer_second.assign(sec.data_ptr<double>(), sec.data_ptr<double>() + L);
    // Second order with every block: all layers move together.
    double dfull[2] = {0, 0};
    for (int side = 0; side < 2; ++side) {
        const double s = side == 0 ? eps : -eps;
        p.set_all(s, true);
        runner.forward_backward(tokens);
        // Per-layer rows summed in layer order: the same value for every P.
        dfull[side] = table_sum(gather_layer_table(t, p.directional(), l0, L));
        tick();
    }
    r.second_full = 0.5 * (dfull[0] - dfull[1]) / (2 * eps);

    // Actual loss changes, forward only.
    std::vector<double> layer_df(static_cast<std::size_t>(L));
    for (int64_t layer = 0; layer < L; ++layer) {
        p.set([&](int64_t j) { return j == layer - l0 ? 1.0 : 0.0; }, none);
        layer_df[std::size_t(layer)] = runner.forward(tokens).mean() - r.f_orig;
        tick();
    }
    r.layer_delta_f = layer_df;
    p.set_all(1.0, false);
    r.delta_f = runner.forward(tokens).mean() - r.f_orig;
    tick();
    for (double lambda : opt.lambdas) {
        if (lambda == 1.0) {
            r.lambda_delta_f.push_back(r.delta_f);
            continue;
        }
        p.set_all(lambda, false);
        r.lambda_delta_f.push_back(runner.forward(tokens).mean() - r.f_orig);
        tick();
    }
    p.set_all(0.0, false);
    return r;
}

double second_order_exact(model::Stage& stage, const model::StageTensors& w_quant,
                          const at::Tensor& tokens, int64_t microbatch, int64_t layer) {
    if (!stage.range().first || !stage.range().last)
        throw ConfigError("second_order_exact needs the whole model in one stage");
    LinearPath    p(stage, w_quant);
    const int64_t il = layer - stage.range().layer_begin;
    p.set([](int64_t) { return 0.0; }, [&](int64_t j) { return j == il; });
    std::vector<at::Tensor> params, v;
    for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
        params.push_back(stage.weights().layers[std::size_t(il)].linear(model::kLinears[i]));
        v.push_back(p.dw(std::size_t(il), i));
    }
    const int64_t N = tokens.size(0), T = tokens.size(1);
    double        vhv = 0;
    for (int64_t b0 = 0; b0 < N; b0 += microbatch) {
        const at::Tensor tok  = tokens.narrow(0, b0, std::min(microbatch, N - b0));
        const at::Tensor loss = stage.forward(tok, tok).sum() / double(N * (T - 1));
        const auto       g    = torch::autograd::grad({loss}, params, {}, /*retain_graph=*/true,
                                                      /*create_graph=*/true);
        at::Tensor       gv   = at::zeros({}, loss.options());
        for (std::size_t i = 0; i < g.size(); ++i) gv = gv + (g[i] * v[i]).sum();
        const auto hv = torch::autograd::grad({gv}, params);
        for (std::size_t i = 0; i < hv.size(); ++i)
            vhv += (hv[i].to(at::kDouble) * v[i].to(at::kDouble)).sum().item<double>();
    }
    p.set_all(0.0, false);
    return 0.5 * vhv;
}

}  // namespace rq::sensitivity
