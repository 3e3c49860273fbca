#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

// The fp32 forward of causal attention (requant/model/attention.h) as one fused kernel: per
// task, one group of R query heads sharing a key/value head and one block of query positions,
// scores, softmax and p·v in the task's own cache-sized buffers, read straight from the strided
// q, k, v and written straight into o [B, T, H, D]. No copies into a head-major layout, no
// batched GEMM (ATen's CPU bmm runs one BLAS call per group, each split over the threads).
// Each output element is summed in one fixed order by one thread, in mul-then-add (no FMA), so
// the result is the same for every thread count and for the AVX2 and baseline builds
// (vec_math.h). Legend as in attention.h; g = b * Hkv + hkv; a block's probabilities are
// [R*n, t0+n], row (t - t0) * R + r for query head hkv * R + r at position t.

namespace rq::model {

// q [B, H, T, D], k and v [B, Hkv, T, D], fp32, each with a contiguous last dimension (any
// other strides) -> o [B, T, H, D] contiguous. block: query positions per block (> 0). kept:
// when given, receives each block's probabilities for all groups, [G, R*n, t0+n].
at::Tensor attention_forward_f32(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 int64_t block, std::vector<at::Tensor>* kept);
// The gradients (dq [B, H, T, D], dk and dv [B, Hkv, T, D]) of that call's output for dout
// [B, T, H, D], per group in one task, block after block: dk and dv sum the blocks in order.
// kept: what attention_forward_f32 kept (the same blocking), or empty to recompute them.
std::array<at::Tensor, 3> attention_backward_f32(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v, const at::Tensor& dout,
                                                 int64_t                        block,
                                                 const std::vector<at::Tensor>& kept);

}  // namespace rq::model
