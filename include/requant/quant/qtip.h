#pragma once
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/quant/hadamard.h"
#include "requant/quant/quantized.h"
#include "requant/quant/trellis.h"

// QTIP on one linear (PAPER.md §9.1-9.3), without fine-tuning: pad both dimensions to
// multiples of 16 (zero weights, zero Hessian rows/columns, then damped), incoherence by
// Incoherence transforms on both sides, one scale Wscale = RMS(Wr) / (RMS(code) 0.9), and
// BlockLDLQ: H_r = L D L^T with 16 x 16 diagonal blocks, column blocks from last to first, each
// block's target W_r[:, j] + (W_r[:, >j] - W^_r[:, >j]) A[>j, j] (A = L - I) quantized as 16 x 16
// tiles (row-major, T = 256 weights) by the tail-biting trellis. O out, I in; O', I' padded.
//
// What a model shares: the code of each K (HYB's table, fp16, from hyb_table(kQtipLutSeed)) and
// the Kronecker factor of each odd part of a padded dimension. What each linear holds: its
// signs (seeded per layer and linear), Wscale and the tiles' bits (quantized.h TrellisDense).

namespace rq::quant {

inline constexpr uint64_t kQtipLutSeed = 1;  // HYB's table: one fixed k-means initialisation
inline constexpr int      kQtipTile    = 16;

struct QtipParams {
    TrellisCode code        = TrellisCode::Hyb;
    double      damp        = 0.01;  // fraction of mean(diag H) added to the diagonal
    uint64_t    sign_seed   = 0;     // this linear's sign vectors
    uint64_t    factor_seed = 0;     // the model's Kronecker factors
};

// The model's code for K bits (cached per process; HYB's table is computed once, ~1 s).
const BitshiftTrellis& qtip_code(int K, TrellisCode code);
// HYB's table as the model stores it: fp16 [2^Q, 2].
at::Tensor qtip_hyb_lut();

// w: float [O, I]; h: X^T X of the input, float or double [I, I]. K in 1..4.
QuantizedLinear qtip_quantize(const at::Tensor& w, const at::Tensor& h, int K, const QtipParams& p);
// fp32 [O, I] in the original basis (quantized.h dequantize calls this for trellis parts).
at::Tensor qtip_dequantize(const QuantizedLinear& q);

// The odd parts m > 1 of the given (padded) dimensions, sorted, each once.
std::vector<int64_t> qtip_odd_parts(const std::vector<int64_t>& padded_dims);
// Bits a model stores once: HYB's fp16 table and each Kronecker factor (fp64 [m, m]).
double qtip_shared_bits(TrellisCode code, const std::vector<int64_t>& odd_parts);

// A dimension rounded up to a multiple of 16.
int64_t qtip_pad(int64_t n);

// H = L D L^T with L unit lower triangular in 16 x 16 blocks and D block diagonal (double
// [n, n] each); n a multiple of 16, H positive definite. Throws NumericError otherwise.
void block_ldl(const at::Tensor& h, at::Tensor& l, at::Tensor& d);

}  // namespace rq::quant
