#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "requant/io/hf_config.h"

// Rotary position embedding tables, HF rotate-half convention, with llama3 frequency scaling.
// Computed in fp32 exactly as Hugging Face's Llama does (inverse frequencies, the llama3
// adjustment and the angles all in fp32), then cast to the model's dtype.
// T = positions, D = head_dim.

namespace rq::model {

// Inverse frequencies, fp32 [D/2], after rope scaling.
at::Tensor rope_inv_freq(const io::LlamaConfig& c);

struct RopeTables {
    at::Tensor cos;  // [T, D]
    at::Tensor sin;  // [T, D]
};
RopeTables rope_tables(const io::LlamaConfig& c, int64_t n_pos, at::ScalarType dtype);

// x: [B, nh, T, D] (any strides; a transposed view of a linear's output is read in place);
// returns x*cos + rotate_half(x)*sin with tables sliced to T, contiguous [B, nh, T, D]. A fused
// kernel with a hand-written backward in fp32 and fp64 (the gradient comes back in x's layout).
at::Tensor apply_rope(const at::Tensor& x, const RopeTables& rt);
// The plain twin: ATen ops, gradients by autograd.
at::Tensor apply_rope_ref(const at::Tensor& x, const RopeTables& rt);

}  // namespace rq::model
