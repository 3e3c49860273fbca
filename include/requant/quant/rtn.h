#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "requant/quant/quantized.h"

// Round-to-nearest, asymmetric uniform quantization per group along the input dimension (or
// per output channel). Per group, with min <= 0 <= max over the group's weights and 0:
// scale = max(max-min, 1e-5) / (2^b - 1) rounded up to fp16,
// zero = clamp(round(-min/scale), 0, 2^b - 1), code = clamp(round(w/scale) + zero, 0, 2^b - 1);
// dequantized w = scale * (code - zero). Stored scales and zeros are exactly the ones used, so
// weights already on such a grid come back bit for bit. O out, I in, G group size.

namespace rq::quant {

struct RtnParams {
    int     bits       = 4;    // 2..8
    int64_t group_size = 128;  // G; 0 = per output channel; the last group may be partial
};

// Scale and zero of each row of w_group [O, g]: fp32 [O, 1] each (values representable in fp16).
void uniform_group_params(const at::Tensor& w_group, int bits, at::Tensor& scale, at::Tensor& zero);
// Codes (as fp32) of w [O, g] for per-row scale/zero [O, 1].
at::Tensor uniform_codes(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero,
                         int bits);

// w: float [O, I]. Vectorised over rows.
QuantizedLinear rtn_quantize(const at::Tensor& w, const RtnParams& p);
// Plain loops, one weight at a time: the ground truth rtn_quantize must equal bit for bit.
QuantizedLinear rtn_quantize_ref(const at::Tensor& w, const RtnParams& p);

void check_quant_params(int bits, int64_t group_size);  // throws ConfigError

}  // namespace rq::quant
