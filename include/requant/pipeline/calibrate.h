#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/dist/transport.h"
#include "requant/model/llama.h"
#include "requant/quant/quantized.h"

// Phases 2-3 on one rank: statistics of each linear's calibration inputs, gathered in the
// distributed forward, and the base quantizer applied to every linear of the rank's layers.
// N calibration sequences, T tokens, C n_embd.

namespace rq::pipeline {

// Accumulates X^T X (fp64, summed over tokens) per (layer, linear input) during forward.
class HessianCollector : public model::LinearObserver {
  public:
    void observe(int64_t layer, model::LinearInput which, const at::Tensor& x) override;
    // double [in, in]; throws Error if nothing was observed for it.
    const at::Tensor& xtx(int64_t layer, model::LinearInput which) const;
    int64_t           n_rows(int64_t layer, model::LinearInput which) const;
    void              clear() { acc_.clear(); }

  private:
    struct Entry {
        at::Tensor xtx;
        int64_t    rows = 0;
    };
    std::map<std::pair<int64_t, int>, Entry> acc_;
};

struct QuantSpec {
    std::string method     = "rtn";  // rtn | gptq
    int         bits       = 4;
    int64_t     group_size = 128;
    double      damp       = 0.01;
    bool        act_order  = false;
    int64_t     block_size = 128;
    bool        sequential = false;  // statistics through already-quantized earlier layers
};

using LayerQuant = std::array<quant::QuantizedLinear, 7>;  // model::kLinears order

// Quantizes the 7 linears of `layer` of the stage with the spec's method and replaces each
// weight by its dequantized value (fp32). `stats` may be null for methods that need none.
LayerQuant quantize_layer(model::Stage& stage, int64_t layer, const HessianCollector* stats,
                          const QuantSpec& spec);

struct CalibrationTimes {
    double statistics_s = 0, quantize_s = 0;
};

// Statistics (if the method needs them) and quantization of every layer of this rank's stage.
// Non-sequential: one streamed full-precision forward through the whole pipeline collects
// every layer's statistics. Sequential: layer by layer in model order, each layer's statistics
// taken from inputs that passed through the already-quantized layers before it (hidden states
// pass from rank to rank). `on_layer(done)` is called on each rank after each of its layers.
std::vector<LayerQuant> calibrate_and_quantize(model::Stage& stage, dist::Transport& t,
                                               const at::Tensor& calib_tokens, int64_t microbatch,
                                               const QuantSpec& spec, CalibrationTimes& times,
                                               const std::function<void(int64_t)>& on_layer = {});

bool method_needs_hessian(const std::string& method);

}  // namespace rq::pipeline
