#pragma once
#include <cstddef>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/io/job.h"
#include "requant/quant/awq.h"
#include "requant/quant/quantized.h"
#include "requant/quant/squeezellm.h"

// One interface over the base quantizers and the table of them (DESIGN.md §5). A method
// quantizes together the linears of a layer that read one input (AWQ shares one input scale
// among them; the others quantize each linear alone), and is scored by its own objective, the
// distance of W_hat from W it minimises; Alg. 1 scores its outlier candidates with it. A new
// method is one row in quantizer.cpp and one file beside it.
// O_k out_features of linear k of a group, I in_features (shared), n sampled input rows.

namespace rq::quant {

// What a method needs from the calibration data.
struct StatsNeeds {
    bool xtx      = false;  // X^T X of each linear input (GPTQ's Hessian)
    bool abs_mean = false;  // mean |x| per input channel (AWQ's scale search)
    bool samples  = false;  // input rows sampled evenly from the calibration stream (AWQ)
    bool fisher   = false;  // Fisher diagonal of every weight (SqueezeLLM)
    // Every row of the inputs of q/k/v and of gate/up, as sequences (AWQ's block-output loss).
    // Too large to hold for every layer at once: collected layer by layer.
    bool rows = false;
    bool forward() const { return xtx || abs_mean || samples || rows; }  // in a forward pass
};

// Statistics of one linear input; undefined where the method does not need them.
struct InputStats {
    at::Tensor xtx;       // double [I, I]
    at::Tensor abs_mean;  // float [I]
    at::Tensor samples;   // float [n, I]
    at::Tensor rows;      // float [N, T, I]: every row, as sequences (q/k/v's, gate/up's input)
};

// The linears of one layer that read one input.
struct InputGroup {
    std::vector<at::Tensor> w;       // float [O_k, I]: the weights
    std::vector<at::Tensor> sparse;  // bool [O_k, I] each, or undefined: weights stored apart
    std::vector<at::Tensor> fisher;  // float [O_k, I] each when needs.fisher, else empty
    std::vector<bool>       clip;    // AWQ: search a clipping range (false for q and k)
    // AWQ: search an input scale; false for o_proj when v_proj and o_proj differ in shape (GQA),
    // where the reference has no v -> o scale.
    bool scale = true;
    // AWQ: per linear, the next group's input scale folded into its rows (float [O_k]), or
    // undefined (awq.h AwqLinear::row_scale); may be shorter than w (missing = none).
    std::vector<at::Tensor> row_scale;
    std::vector<uint64_t>   ids;  // layer * 7 + linear of each (QTIP seeds its signs by it)
    InputStats              in;
    BlockLoss               loss;  // AWQ with awq_loss = block; empty: the linears' own outputs
};

// One linear's dense part. Most methods fit it on W with the sparse weights zeroed (they are
// stored apart as W - dequant); GPTQ fits around them (as SpQR) and reports in `kept`
// (float [O, I]) the values they keep, which then replace W's there. Undefined: W's own.
struct DenseFit {
    QuantizedLinear q;
    at::Tensor      kept;
};

// The dense parts of the group's linears, in its order.
using QuantizeFn = std::vector<DenseFit> (*)(const InputGroup& g, const io::JobQuant& p);
// The method's objective for one linear at W_hat (fp32 [O, I]): 0 at W_hat = W. `fisher` is
// the linear's Fisher diagonal (methods that need it), else undefined.
using ObjectiveFn = double (*)(const at::Tensor& w, const at::Tensor& w_hat, const InputStats& in,
                               const at::Tensor& fisher);

struct Quantizer {
    io::QuantMethod method;
    StatsNeeds      needs;
    QuantizeFn      quantize;
    QuantizeFn      quantize_ref;  // the plain reference twin; nullptr where there is none
    ObjectiveFn     objective;
    const char*     objective_text;      // "tr(dW H dW^T), H = X^T X", for docs and messages
    bool            objective_is_proxy;  // the objective is tr(dW H dW^T): the proxy's numerator
};

const std::vector<Quantizer>& quantizers();  // every method, in QuantMethod order
const Quantizer&              quantizer(io::QuantMethod m);
// What the job's method needs: its row's, and for AWQ with awq_loss = block also X^T X (the
// own-output loss of o_proj and down_proj on every token) and the rows.
StatsNeeds stats_needs(const io::JobQuant& p);

SqueezeParams squeeze_params(const io::JobQuant& p);  // what the squeezellm row runs

}  // namespace rq::quant
