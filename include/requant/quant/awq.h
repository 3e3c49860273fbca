#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/quant/quantized.h"

// AWQ (Lin et al., 2024): activation-aware per-input-channel scaling before uniform group
// quantization, following mit-han-lab/llm-awq (auto_scale.py, auto_clip.py). The linears that
// share one input (q/k/v; gate/up; o; down) get one scale vector s [I]:
//   s(alpha) = max(mean|x|^alpha, 1e-4) / sqrt(max * min),  alpha = 0, 1/grid, .., (grid-1)/grid,
// rounded to fp16 (the search evaluates exactly the s that is stored). Each linear stores the
// codes of W diag(s) on RTN's uniform grid (rtn.h) and in_scale = s, so its weight is
// What = dequant(codes) diag(s)^-1; with the next linear's scale r folded into its rows
// (AwqLinear::row_scale), of diag(1/r) W diag(s) and What = diag(r) dequant(codes) diag(s)^-1.
// Both scales cost no bits: a deployed model folds them away (quant/quantized.h).
// Objective: the caller's BlockLoss when given (the reference's: the output error of the block
// the linears feed, e.g. the attention output through softmax and o_proj for q/k/v, on every
// calibration token); else the summed output error of the group's own linears on the sampled
// inputs, sum_l ||x W_l^T - x What_l^T||^2 = sum_l trace(dW_l H dW_l^T), H = x^T x. alpha = 0
// gives s = 1, i.e. plain RTN, and a later alpha must be strictly better (as the reference), so
// the result never does worse than RTN on that objective.
// Clipping (per linear with clip = true, after the scale search): per output row and group,
// max_val = absmax(W diag(s)) * (1 - k/clip_grid) for k = 0 .. floor(max_shrink*clip_grid)-1
// (as auto_clip.py; k = 0, no clipping, is always tried), weights clamped to [-max_val, max_val],
// keeping the candidate with the least error of that group's partial output on the sampled inputs
// (the group's columns of x, divided by s), taken as it is (as auto_clip.py). scale = false
// (o_proj of a GQA model, where the reference skips the v -> o scale because v_proj and o_proj
// differ in shape): no s, no in_scale; the clipping search still runs.
// Quantization in fp32 (bit-identical to rtn_quantize for the same scaled weights), errors in
// fp64. Deterministic. O out, I in, n sampled rows, G group size.

namespace rq::quant {

struct AwqParams {
    int     bits       = 4;     // 2..8
    int64_t group_size = 128;   // G; 0 = per output channel
    int     grid       = 20;    // alpha in {0, 1/grid, ..., (grid-1)/grid}; >= 1 (1: RTN)
    bool    clip       = true;  // clipping search after scaling
    int     clip_grid  = 20;    // shrink step 1/clip_grid of the group's max |w|; >= 1
    double  max_shrink = 0.5;   // largest shrink tried is below this; in [0, 1)
    bool    scale      = true;  // search the input scale s (false: s = none)
};

// The error of the output of the block a group of linears feeds when the group's linears take
// w_hat (float [O_k, I] each, in the group's order, in the original basis: dequant / s).
using BlockLoss = std::function<double(const std::vector<at::Tensor>& w_hat)>;

struct AwqLinear {
    at::Tensor w;            // float [O, I]
    bool       clip = true;  // false for q/k: attention scores are sensitive to clipping (AWQ)
    // The next linear's scale r (float [O], fp16 values, positive) folded into this one's rows,
    // as the reference's apply_scale does before clipping (up_proj by down_proj's s; v_proj by
    // o_proj's where o is scaled); undefined = none. The scale search still scores W; the
    // clipping and the final codes are of diag(1/r) W diag(s), and out_scale = r.
    at::Tensor row_scale = {};
};

// group: the linears reading one input (same I). x: float [n, I] sampled input rows;
// x_abs_mean: float [I], mean |x| over all calibration tokens; loss: the scale search's
// objective (empty: the linears' own outputs on x). Returns one uniform
// QuantizedLinear per linear, in order, each with in_scale = s (fp16 [I], positive; none when
// p.scale is false) and out_scale = its row_scale.
// Throws ConfigError for bad parameters, ShapeError for an empty group or mismatched shapes,
// NumericError for a negative or non-finite x_abs_mean or row_scale.
std::vector<QuantizedLinear> awq_quantize(const std::vector<AwqLinear>& group, const at::Tensor& x,
                                          const at::Tensor& x_abs_mean, const AwqParams& p,
                                          const BlockLoss& loss = {});

}  // namespace rq::quant
