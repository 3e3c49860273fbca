#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/model/llama.h"

// The straight path w + s (w~ - w) over the linears of one pipeline stage, the thing PQI
// integrates along and the Taylor terms expand around. Moves each layer to its own point of the
// path and says which linears take gradients. Holds no copy of w~ and, given w, none of w
// either: dw = w~ - w is formed one linear at a time when needed, in the stage's dtype.
// O out_features, I in_features.

namespace rq::sensitivity {

class LinearPath {
  public:
    // w~ of stage layer il, linear i (kLinears order), made on each call: e.g. reconstructed
    // from its quantized parts, so that no copy of w~ is held while the path moves.
    using Source = std::function<at::Tensor(std::size_t il, std::size_t i)>;

    // w is read from the stage's linears now; w_quant (borrowed: it must outlive the path) has
    // their shapes. Throws ShapeError otherwise.
    LinearPath(model::Stage& stage, const model::StageTensors& w_quant);
    // w given (borrowed; any floating dtype, e.g. read-only views of the checkpoint in BF16):
    // the path holds no copies. The stage's linears are not read.
    LinearPath(model::Stage& stage, const model::StageTensors& w_orig,
               const model::StageTensors& w_quant);
    // w given as above, w~ made by `w_quant` whenever needed (its shapes are not checked).
    LinearPath(model::Stage& stage, const model::StageTensors& w_orig, Source w_quant);

    // Stage layer il to w + scale(il) dw (scale 0: w, 1: w~, both exactly); its linears require
    // gradients (old ones dropped) where grad(il).
    void set(const std::function<double(int64_t)>& scale, const std::function<bool(int64_t)>& grad);
    void set_all(double scale, bool grad);  // every layer at the same point

    // dw . dF/dw per linear of stage layer il, from the gradients in the linears (zero where
    // none was taken), in fp64.
    std::array<double, model::kNumLinears>              directional(std::size_t il) const;
    std::vector<std::array<double, model::kNumLinears>> directional() const;  // every stage layer

    at::Tensor w(std::size_t il, std::size_t i) const;   // [O, I] in the stage's dtype
    at::Tensor dw(std::size_t il, std::size_t i) const;  // [O, I], formed on each call

  private:
    model::Stage&              stage_;
    model::StageTensors        owned_;  // w, when read from the stage
    const model::StageTensors& w0_;
    Source                     wq_;
};

}  // namespace rq::sensitivity
