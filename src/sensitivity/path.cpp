// The straight path between w and w~ over a stage's linears (requant/sensitivity/path.h).
#include "requant/sensitivity/path.h"

#include <ATen/ATen.h>

#include "requant/error.h"

namespace rq::sensitivity {

namespace {

model::StageTensors clone_linears(const model::Stage& stage) {
    const auto&         layers = stage.weights().layers;
    model::StageTensors w(layers.size());
    for (std::size_t il = 0; il < layers.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            w[il][i] = layers[il].linear(model::kLinears[i]).detach().clone();
    return w;
}

void check_shapes(const model::Stage& stage, const model::StageTensors& w_orig,
                  const model::StageTensors& w_quant) {
    const auto& layers = stage.weights().layers;
    if (w_quant.size() != layers.size() || w_orig.size() != layers.size())
        throw ShapeError("path: one w and one w~ set per stage layer");
    for (std::size_t il = 0; il < layers.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            if (w_quant[il][i].sizes() != w_orig[il][i].sizes())
                throw ShapeError(std::string("path: w~ and w differ in shape for ") +
                                 model::linear_name(model::kLinears[i]) + " of stage layer " +
                                 std::to_string(il));
}

LinearPath::Source borrow(const model::StageTensors& w) {
    return [&w](std::size_t il, std::size_t i) { return w[il][i]; };
}

}  // namespace

LinearPath::LinearPath(model::Stage& stage, const model::StageTensors& w_quant)
    : stage_(stage), owned_(clone_linears(stage)), w0_(owned_), wq_(borrow(w_quant)) {
    check_shapes(stage, w0_, w_quant);
}

LinearPath::LinearPath(model::Stage& stage, const model::StageTensors& w_orig,
                       const model::StageTensors& w_quant)
    : stage_(stage), w0_(w_orig), wq_(borrow(w_quant)) {
    check_shapes(stage, w0_, w_quant);
}

LinearPath::LinearPath(model::Stage& stage, const model::StageTensors& w_orig, Source w_quant)
    : stage_(stage), w0_(w_orig), wq_(std::move(w_quant)) {
    if (w_orig.size() != stage.weights().layers.size())
        throw ShapeError("path: one w set per stage layer");
}

at::Tensor LinearPath::w(std::size_t il, std::size_t i) const {
    return w0_[il][i].to(stage_.dtype());
}

at::Tensor LinearPath::dw(std::size_t il, std::size_t i) const {
    return wq_(il, i).to(stage_.dtype()) - w(il, i);
}

void LinearPath::set(const std::function<double(int64_t)>& scale,
                     const std::function<bool(int64_t)>&   grad) {
    auto&      layers = stage_.weights().layers;
    const auto dt     = stage_.dtype();
    for (std::size_t il = 0; il < layers.size(); ++il) {
        const double s = scale(int64_t(il));
        const bool   g = grad(int64_t(il));
        for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
            at::Tensor& slot = layers[il].linear(model::kLinears[i]);
            slot             = at::Tensor();  // the old point is dropped before the new is made
            at::Tensor point = s == 0.0   ? w0_[il][i].to(dt, false, /*copy=*/true)
                               : s == 1.0 ? wq_(il, i).to(dt, false, /*copy=*/true)
                                          : w(il, i) + dw(il, i) * s;
            slot             = g ? point.requires_grad_(true) : point;
        }
    }
}

void LinearPath::set_all(double scale, bool grad) {
    set([scale](int64_t) { return scale; }, [grad](int64_t) { return grad; });
}

std::array<double, model::kNumLinears> LinearPath::directional(std::size_t il) const {
    std::array<double, model::kNumLinears> out{};
    const auto&                            lw = stage_.weights().layers[il];
    for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
        const at::Tensor& g = lw.linear(model::kLinears[i]).grad();
        if (g.defined())
            out[i] = (dw(il, i).to(at::kDouble) * g.to(at::kDouble)).sum().item<double>();
    }
    return out;
}

std::vector<std::array<double, model::kNumLinears>> LinearPath::directional() const {
    std::vector<std::array<double, model::kNumLinears>> out;
    for (std::size_t il = 0; il < w0_.size(); ++il) out.push_back(directional(il));
    return out;
}

}  // namespace rq::sensitivity
