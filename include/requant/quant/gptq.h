#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "requant/quant/quantized.h"

// GPTQ (Frantar et al., 2023): column-by-column quantization with second-order error feedback
// from the layer Hessian H = 2 X^T X / n of the linear's calibration inputs, following the
// reference implementation: dead columns zeroed, dampening lambda = damp * mean(diag H), optional
// act-order (columns by decreasing diag H), lazy block updates, Cholesky of H^-1 (upper), group
// parameters fitted when a group's first column is reached, on the weights as they stood when
// that column's block began (the reference's find_params on W), or all up front in the original
// column order (static_groups, the reference's --static-groups: with act-order, no g_idx), the
// same uniform grid as RTN. Weights under a sparse mask (ReQuant's outliers and significant
// weights, stored apart) are kept at the value they have when their column is reached and
// pass no error on (as SpQR), and are left out of the group fits. O out, I in.

namespace rq::quant {

struct GptqParams {
    int     bits          = 4;
    int64_t group_size    = 128;   // 0 = per output channel
    double  damp          = 0.01;  // fraction of mean(diag H) added to the diagonal
    bool    act_order     = false;
    int64_t block_size    = 128;  // lazy-batch block
    bool    static_groups = false;
};

// w: float [O, I]; hessian: float or double [I, I] (symmetric PSD, e.g. accumulated X^T X);
// sparse: bool [O, I] or undefined; kept, when given: float [O, I], the value each weight had
// when it was quantized (under `sparse`, the value it keeps). Throws ConfigError for bad
// parameters, ShapeError for mismatched shapes, and NumericError if H + damp is not positive
// definite (increase damp).
QuantizedLinear gptq_quantize(const at::Tensor& w, const at::Tensor& hessian, const GptqParams& p,
                              const at::Tensor& sparse = at::Tensor(), at::Tensor* kept = nullptr);

// The layer's output error for inputs with second moment H: trace(dW H dW^T), dW = w_hat - w.
double output_error(const at::Tensor& w, const at::Tensor& w_hat, const at::Tensor& hessian);

}  // namespace rq::quant
