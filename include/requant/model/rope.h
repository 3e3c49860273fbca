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

// x: [B, nh, T, D]; returns x*cos + rotate_half(x)*sin with tables sliced to T.
at::Tensor apply_rope(const at::Tensor& x, const RopeTables& rt);

}  // namespace rq::model
