#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/model/llama.h"

// The straight path w + s (w~ - w) over the linears of one pipeline stage, the thing PQI
// integrates along and the Taylor terms expand around. Holds w and dw = w~ - w for this rank's
// layers; moves each layer to its own point of the path and says which linears take gradients.
// O out_features, I in_features.

namespace rq::sensitivity {

class LinearPath {
  public:
    // w is read from the stage's linears now; w_quant (borrowed: it must outlive the path) has
    // their shapes. Throws ShapeError otherwise.
    LinearPath(model::Stage& stage, const model::StageTensors& w_quant);

    // Stage layer il to w + scale(il) dw (scale 0: w, 1: w~, both exactly); its linears require
    // gradients (old ones dropped) where grad(il).
    void set(const std::function<double(int64_t)>& scale, const std::function<bool(int64_t)>& grad);
    void set_all(double scale, bool grad);  // every layer at the same point

    // dw . dF/dw per linear of stage layer il, from the gradients in the linears (zero where
    // none was taken), in fp64.
    std::array<double, model::kNumLinears>              directional(std::size_t il) const;
    std::vector<std::array<double, model::kNumLinears>> directional() const;  // every stage layer

    const model::StageTensors& w() const { return w0_; }   // float [O, I] per linear
    const model::StageTensors& dw() const { return dw_; }  // float [O, I] per linear

  private:
    model::Stage&              stage_;
    const model::StageTensors& wq_;
    model::StageTensors        w0_, dw_;
};

}  // namespace rq::sensitivity
