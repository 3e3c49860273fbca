#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "requant/quant/hadamard.h"
#include "requant/quant/trellis.h"

// QTIP on one linear (PAPER.md §9.1-9.3), without fine-tuning: pad both dimensions to
// multiples of 16 (zero weights, zero Hessian rows/columns, then damped), incoherence by
// Incoherence transforms on both sides, one scale Wscale = RMS(Wr) / (RMS(code) 0.9), and
// BlockLDLQ: H_r = L D L^T with 16 x 16 diagonal blocks, column blocks from last to first, each
// block's target W_r[:, j] + (W_r[:, >j] - W^_r[:, >j]) A[>j, j] (A = L - I) quantized as 16 x 16
// tiles (row-major, T = 256 weights) by the tail-biting trellis. O out, I in; O', I' padded.
// Not yet a registry method, checkpoint format or job key (issue 16).

namespace rq::quant {

struct QtipParams {
    double   damp = 0.01;  // fraction of mean(diag H) added to the diagonal
    uint64_t seed = 0;     // of the sign vectors and the Kronecker factors
};

struct QtipLinear {
    int64_t    rows = 0, cols = 0;  // O, I
    int64_t    rows_padded = 0, cols_padded = 0;
    double     wscale = 0;
    at::Tensor words;  // uint16 as int16 [O'/16, I'/16, 16 K]: each tile's T K bits
    at::Tensor w_hat;  // float [O, I]: the dequantized weight in the original basis
};

// w: float [O, I]; h: X^T X of the input, float or double [I, I].
QtipLinear qtip_quantize(const at::Tensor& w, const at::Tensor& h, const BitshiftTrellis& code,
                         const QtipParams& p);

// H = L D L^T with L unit lower triangular in 16 x 16 blocks and D block diagonal (double
// [n, n] each); n a multiple of 16, H positive definite. Throws NumericError otherwise.
void block_ldl(const at::Tensor& h, at::Tensor& l, at::Tensor& d);

}  // namespace rq::quant
