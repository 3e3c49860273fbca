#pragma once
#include <array>
#include <cmath>
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "requant/io/job.h"
#include "requant/model/llama.h"
#include "requant/quant/decomposed.h"
#include "requant/quant/quantizer.h"
#include "requant/sensitivity/stats.h"

// One decoder layer decomposed: each of its 7 linears = dense part from the base quantizer
// (quant/quantizer.h) + sparse outliers + sparse significant weights. The weights kept sparse
// are left out of the dense fit (zeroed for the uniform methods, zero k-means weight for
// SqueezeLLM) and stored as fp16 CSR residuals W - dequant(dense).

namespace rq::decompose {

using LayerQuant = std::array<quant::LinearQuant, model::kNumLinears>;  // kLinears order

// A layer's statistics as its quantizer takes them: per linear input (model::LinearInput
// order) and, where the method needs it, the Fisher diagonal of each linear (else null).
// config: the model's, for AWQ's block-output loss (with the rows of the block inputs; without
// either, as in Alg. 1's candidate scoring from the full-precision pass, AWQ scores the
// linears' own outputs on the sampled rows).
struct LayerStats {
    std::array<quant::InputStats, 4> inputs;
    const model::LayerTensors*       fisher = nullptr;
    const model::LlamaConfig*        config = nullptr;
};
// From a collector (null: none collected) and this layer's Fisher diagonals (or null).
LayerStats layer_stats(const sensitivity::StatsCollector* stats, int64_t layer,
                       const model::LayerTensors* fisher);

// How far one linear's W_hat is from W, before the sparse parts (dense alone) and after (dense +
// outliers + significant), on the quantize-time statistics. NaN where not computable.
//   objective: the method's own (quant::Quantizer::objective: what Alg. 1 scores);
//   proxy: |(W - W_hat) X|^2 / |W X|^2 on the calibration inputs X, from X^T X when collected
//          (GPTQ), else from AWQ's sampled input rows; NaN for RTN and SqueezeLLM (no X kept);
//   weight: |W - W_hat|^2 / |W|^2.
// Computed in fp32 (X^T X converted one input at a time), so GPTQ's objective here may differ
// from Alg. 1's fp64 score of the same W_hat in the 7th digit.
struct LinearErrors {
    double objective_dense = NAN, objective = NAN;
    double proxy_dense = NAN, proxy = NAN;
    double weight_dense = NAN, weight = NAN;
};
using LayerErrors = std::array<LinearErrors, model::kNumLinears>;  // kLinears order

// Which linear inputs' groups (model::LinearInput order) to quantize: the others' linears keep
// W (w_hat = w, an empty LinearQuant, no errors).
using InputSet                = std::array<bool, 4>;
constexpr InputSet kAllInputs = {true, true, true, true};

// Quantizes the layer's linears `w` (those reading the inputs in `only`) with the job's method;
// masked weights (either mask may be null, or undefined per linear) go to the sparse parts. The
// dequantized W_hat = dense + outliers + significant goes to w_hat (fp32 -> w's dtype). Errors name
// the layer and the linears. `errors` (optional) receives each linear's LinearErrors.
LayerQuant quantize_weights(const model::LayerTensors& w, int64_t layer, const LayerStats& stats,
                            const model::LayerTensors* outlier_masks,
                            const model::LayerTensors* significant_masks, const io::JobQuant& p,
                            model::LayerTensors& w_hat, LayerErrors* errors = nullptr,
                            const InputSet& only = kAllInputs);

// The same on the stage's layer `layer` (absolute index), whose linears become W_hat.
LayerQuant quantize_layer(model::Stage& stage, int64_t layer, const LayerStats& stats,
                          const model::LayerTensors* outlier_masks,
                          const model::LayerTensors* significant_masks, const io::JobQuant& p,
                          LayerErrors* errors = nullptr, const InputSet& only = kAllInputs);

// Puts W_hat = reconstruct(q) of every linear of stage layer `il` (0-based in the stage).
void set_layer_weights(model::Stage& stage, std::size_t il, const LayerQuant& q);

// The stage's linear weights (copies) and setting them back (copied, in the stage's dtype).
model::StageTensors stage_linears(const model::Stage& s);
void                set_stage_linears(model::Stage& s, const model::StageTensors& w);

}  // namespace rq::decompose
