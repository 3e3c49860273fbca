#pragma once
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/quant/quantized.h"

// SqueezeLLM dense part (Kim et al., 2023): per output row, a 1-D k-means with 2^b centroids,
// each weight weighted by its Fisher diagonal (sensitivity), gives a non-uniform lookup table
// of fp16 levels; a weight's code is the index of its nearest level. The sparse part (outliers,
// sensitive values) is not chosen here: give such positions zero Fisher weight and they do not
// move the centroids. O out, I in, K = 2^bits.
//
// Per row, deterministic and independent of the thread count:
// * Weights: the Fisher row; an all-zero Fisher row falls back to uniform weights.
// * Exact rows: when the positive-weight values take at most K distinct fp16 values, those
//   values are the LUT (padded by repeating the largest), so fp16-representable rows come back
//   bit for bit. No iterations are run.
//
// KmeansStart::PlusPlus (the default), the reference's sklearn KMeans(n_clusters = K,
// n_init = 1, max_iter = iters, tol) with the Fisher row as sample_weight:
// * Start: greedy k-means++ weighted by the sample weights (sklearn >= 1.3): the first centre a
//   value drawn with probability f_i / sum f; each next one the best, by weighted potential
//   sum f min d^2, of 2 + floor(ln K) values drawn with probability f_i d_i^2 / potential. The
//   draws come from SplitMix64 seeded per row by (seed, row).
// * Lloyd in fp32 centres (weighted means summed in double): assign to the nearest centre (ties
//   toward the lower), move each centre to its cluster's weighted mean (an empty cluster takes
//   the value farthest from its centre not yet taken), stop when no assignment changed or the
//   centres moved less than tol x the row's variance in total squared shift, or after iters;
//   then the final assignment.
// * The LUT: the centres rounded to fp16, ascending; codes: the nearest level.
//
// KmeansStart::Multistart (this project's earlier variant, kept as an option):
// * Starts (Lloyd runs from each; the lowest final objective is kept, the earlier start on a
//   tie): (1) the weighted (k + 1/2)/K quantiles, k = 0..K-1, of the positive-weight values
//   rounded to fp16, nudged along the distinct values so that the K levels differ; (2) the
//   centres of K equal bins over the range of those fp16 values; (3) the row's per-channel RTN
//   levels (rtn.h; zero-weight values count as 0, which RTN's range holds anyway), rounded to fp16.
//   Lloyd from (1) alone ends above per-row RTN on many real rows (local optima); (3) keeps the
//   result at or below RTN's weighted error up to the fp16 rounding of RTN's levels.
// * Lloyd iteration: each level becomes the fp16 value nearest its cluster's weighted mean (never
//   worse for the cluster than the previous fp16 level, so the objective cannot grow), then
//   every weight is reassigned to its nearest level, ties toward the lower level. A level whose
//   cluster has zero weight, or that collides with a lower one, is re-seeded at the fp16 value of
//   the weight with the largest weighted error whose value is not yet a level (largest first,
//   ties toward the smaller value), then the levels are re-sorted.
// * Each run stops after `iters` iterations or when no positive-weight assignment changed.
// The objective sum_i f_i (w_i - lut[code_i])^2 (f = the weights above) is therefore computed on
// exactly what dequantize() returns.

namespace rq::quant {

enum class KmeansStart { PlusPlus, Multistart };

struct SqueezeParams {
    int         bits  = 4;   // 2..8: K = 2^bits levels per row
    int         iters = 50;  // Lloyd iterations at most (>= 0; 0 = initial levels only)
    KmeansStart start = KmeansStart::PlusPlus;
    uint64_t    seed  = 0;     // PlusPlus: the draws of row r come from (seed, r)
    double      tol   = 1e-4;  // PlusPlus: centre-shift tolerance, relative to the row variance
};

// w: float (or any floating type) [O, I]; fisher: float or double [O, I], finite, >= 0.
// Returns codes uint8 [O, I] and lut fp16 [O, K] (levels ascending), group_size 0, bits set;
// scales and zeros are left empty. Throws ConfigError for bad params, a negative or non-finite
// Fisher value or a non-finite weight (naming its row and column), ShapeError for shapes/dtypes.
QuantizedLinear squeezellm_quantize(const at::Tensor& w, const at::Tensor& fisher,
                                    const SqueezeParams& p);

// One row, w_row [I] and f_row [I] (same rules as above), of the kept start: the weighted
// objective after the initial assignment (entry 0) and after each Lloyd iteration run (entries
// 1..). Multistart: the last entry is the objective of the row squeezellm_quantize returns;
// PlusPlus: the last entry is that objective, one more entry after the final assignment to the
// fp32 centres (the rounding to fp16 comes between them). An exact row gives one entry.
// `row`: the row's index in its matrix (PlusPlus seeds its draws by it).
std::vector<double> squeezellm_objective_trace(const at::Tensor& w_row, const at::Tensor& f_row,
                                               const SqueezeParams& p, int64_t row = 0);

// PlusPlus: the k-means++ start of every row, float [O, K] (ascending), exactly as
// squeezellm_quantize draws it; NaN rows for exact rows (no start). For checks against
// independent implementations.
at::Tensor squeezellm_starts(const at::Tensor& w, const at::Tensor& fisher, const SqueezeParams& p);

}  // namespace rq::quant
