// Taylor terms and actual loss changes across the pipeline (requant/sensitivity/taylor.h).
// Legend: L n_layer, B microbatch sequences, T tokens.
#include "requant/sensitivity/taylor.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include "requant/dist/schedule.h"
#include "requant/io/error.h"

namespace rq::sensitivity {
namespace {

// Moves this rank's layers along dw, each by its own scale, and marks which require gradients.
struct PathPoint {
    model::Stage&    stage;
    LinearSet        w0, dw;
    const LinearSet& wq;

    PathPoint(model::Stage& s, const LinearSet& w_quant) : stage(s), wq(w_quant) {
        auto& layers = s.weights().layers;
        if (w_quant.size() != layers.size())
            throw ShapeError("taylor_study: one w~ set per stage layer");
        w0.resize(layers.size());
        dw.resize(layers.size());
        for (std::size_t il = 0; il < layers.size(); ++il)
            for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
                w0[il][i] = layers[il].linear(model::kLinears[i]).detach().clone();
                if (w_quant[il][i].sizes() != w0[il][i].sizes())
                    throw ShapeError("taylor_study: w~ and w differ in shape");
                dw[il][i] = w_quant[il][i].to(w0[il][i].scalar_type()) - w0[il][i];
            }
    }
    // Local layer il at w + scale(il) dw (scale 1: w~ exactly); grad(il) says whether its
    // linears require gradients (old gradients are dropped).
    template <class Scale, class Grad>
    void set(Scale scale, Grad grad) {
        auto& layers = stage.weights().layers;
        for (std::size_t il = 0; il < layers.size(); ++il) {
            const double s = scale(int64_t(il));
            for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
                at::Tensor w = s == 0.0   ? w0[il][i].clone()
                               : s == 1.0 ? wq[il][i].to(w0[il][i].scalar_type()).clone()
                                          : w0[il][i] + dw[il][i] * s;
                layers[il].linear(model::kLinears[i]) =
                    grad(int64_t(il)) ? w.requires_grad_(true) : w;
            }
        }
    }
    // dw_il,i . grad_il,i for every linear of layer il (zero where no gradient was taken).
    std::array<double, 7> directional(std::size_t il) const {
        std::array<double, 7> out{};
        const auto&           lw = stage.weights().layers[il];
        for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
            const at::Tensor& g = lw.linear(model::kLinears[i]).grad();
            if (g.defined())
                out[i] = (dw[il][i].to(at::kDouble) * g.to(at::kDouble)).sum().item<double>();
        }
        return out;
    }
};

double row_sum(const std::array<double, 7>& r) {
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

TaylorResult taylor_study(model::Stage& stage, dist::Transport& t, const LinearSet& w_quant,
                          const at::Tensor& tokens, int64_t microbatch, const TaylorOptions& opt,
                          const std::function<void(int, int)>& on_pass) {
    const int64_t        L = stage.config().n_layer, l0 = stage.range().layer_begin;
    const int64_t        n_local = int64_t(stage.weights().layers.size());
    PathPoint            p(stage, w_quant);
    dist::PipelineRunner runner(stage, t, microbatch);
    int                  lambda_passes = 0;
    for (double l : opt.lambdas) lambda_passes += l != 1.0;
    const int total = 1 + 2 * int(L + 1) + int(L) + 1 + lambda_passes;
    int       done  = 0;
    auto      tick  = [&] {
        if (on_pass) on_pass(++done, total);
    };
    const auto all  = [](int64_t) { return true; };
    const auto none = [](int64_t) { return false; };
    const auto zero = [](int64_t) { return 0.0; };
    const auto mine = [&](int64_t layer) { return layer >= l0 && layer < l0 + n_local; };

    if (on_pass) on_pass(0, total);
    TaylorResult r;
    // First order: the gradient at w, per (layer, linear).
    p.set(zero, all);
    r.f_orig = runner.forward_backward(tokens).mean();
    std::vector<std::array<double, 7>> local(static_cast<std::size_t>(n_local));
    for (int64_t il = 0; il < n_local; ++il)
        local[std::size_t(il)] = p.directional(std::size_t(il));
    r.first_order = gather_layer_table(t, local, l0, L);
    tick();

    // Second order per layer: v = dw on layer l only, central difference of v . g.
    const double                       eps = opt.hvp_eps;
    std::vector<std::array<double, 7>> second(static_cast<std::size_t>(n_local));
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
        p.set([&](int64_t) { return s; }, all);
        runner.forward_backward(tokens);
        // Per-layer rows summed in layer order: the same value for every P.
        std::vector<std::array<double, 7>> per_layer(static_cast<std::size_t>(n_local));
        for (int64_t il = 0; il < n_local; ++il)
            per_layer[std::size_t(il)] = p.directional(std::size_t(il));
        dfull[side] = table_sum(gather_layer_table(t, per_layer, l0, L));
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
    p.set([](int64_t) { return 1.0; }, none);
    r.delta_f = runner.forward(tokens).mean() - r.f_orig;
    tick();
    for (double lambda : opt.lambdas) {
        if (lambda == 1.0) {
            r.lambda_delta_f.push_back(r.delta_f);
            continue;
        }
        p.set([&](int64_t) { return lambda; }, none);
        r.lambda_delta_f.push_back(runner.forward(tokens).mean() - r.f_orig);
        tick();
    }
    p.set(zero, none);
    return r;
}

double second_order_exact(model::Stage& stage, const LinearSet& w_quant, const at::Tensor& tokens,
                          int64_t microbatch, int64_t layer) {
    if (!stage.range().first || !stage.range().last)
        throw ConfigError("second_order_exact needs the whole model in one stage");
    PathPoint     p(stage, w_quant);
    const int64_t il = layer - stage.range().layer_begin;
    p.set([](int64_t) { return 0.0; }, [&](int64_t j) { return j == il; });
    std::vector<at::Tensor> params, v;
    for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
        params.push_back(stage.weights().layers[std::size_t(il)].linear(model::kLinears[i]));
        v.push_back(p.dw[std::size_t(il)][i]);
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
    p.set([](int64_t) { return 0.0; }, [](int64_t) { return false; });
    return 0.5 * vhv;
}

}  // namespace rq::sensitivity
