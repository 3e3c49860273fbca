// The straight path between w and w~ over a stage's linears (requant/sensitivity/path.h).
#include "requant/sensitivity/path.h"

#include <ATen/ATen.h>

#include "requant/error.h"

namespace rq::sensitivity {

LinearPath::LinearPath(model::Stage& stage, const model::StageTensors& w_quant)
    : stage_(stage), wq_(w_quant) {
    auto& layers = stage.weights().layers;
    if (w_quant.size() != layers.size()) throw ShapeError("path: one w~ set per stage layer");
    w0_.resize(layers.size());
    dw_.resize(layers.size());
    for (std::size_t il = 0; il < layers.size(); ++il)
        for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
            w0_[il][i] = layers[il].linear(model::kLinears[i]).detach().clone();
            if (w_quant[il][i].sizes() != w0_[il][i].sizes())
                throw ShapeError(std::string("path: w~ and w differ in shape for ") +
                                 model::linear_name(model::kLinears[i]));
            dw_[il][i] = w_quant[il][i].to(w0_[il][i].scalar_type()) - w0_[il][i];
        }
}

void LinearPath::set(const std::function<double(int64_t)>& scale,
                     const std::function<bool(int64_t)>&   grad) {
    auto& layers = stage_.weights().layers;
    for (std::size_t il = 0; il < layers.size(); ++il) {
        const double s = scale(int64_t(il));
        const bool   g = grad(int64_t(il));
        for (std::size_t i = 0; i < model::kLinears.size(); ++i) {
            at::Tensor w                          = s == 0.0 ? w0_[il][i].clone()
                                                    : s == 1.0 ? wq_[il][i].to(w0_[il][i].scalar_type()).clone()
                                                               : w0_[il][i] + dw_[il][i] * s;
            layers[il].linear(model::kLinears[i]) = g ? w.requires_grad_(true) : w;
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
            out[i] = (dw_[il][i].to(at::kDouble) * g.to(at::kDouble)).sum().item<double>();
    }
    return out;
}

std::vector<std::array<double, model::kNumLinears>> LinearPath::directional() const {
    std::vector<std::array<double, model::kNumLinears>> out;
    for (std::size_t il = 0; il < w0_.size(); ++il) out.push_back(directional(il));
    return out;
}

}  // namespace rq::sensitivity
