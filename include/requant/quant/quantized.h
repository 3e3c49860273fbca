#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>

// A quantized linear weight, dense part: low-bit codes with either uniform (scale, zero) groups
// along the input dimension or a per-row lookup table of non-uniform levels.
// O = out_features, I = in_features, G = group_size (0 = one group per row), NG = ceil(I/G).

namespace rq::quant {

struct QuantizedLinear {
    int        bits       = 4;  // 2..8
    int64_t    group_size = 0;  // G along the input dimension; 0 = per output channel
    at::Tensor codes;           // uint8 [O, I], one code per weight (packed only when stored)
    at::Tensor scales;          // fp16 [O, NG]     (uniform)
    at::Tensor zeros;           // fp16 [O, NG]     (uniform; integer-valued zero points)
    at::Tensor lut;             // fp16 [O, 2^bits] (non-uniform; empty for uniform)
    at::Tensor g_idx;           // int32 [I]: group of each column when groups follow a
                                // permuted order (GPTQ act-order); empty = column / G
    at::Tensor in_scale;        // fp16 [I]: AWQ per-input-channel scale s; the codes quantize
                                // W*diag(s), so the weight is dequant(codes)/s; empty = none

    int64_t out_features() const { return codes.size(0); }
    int64_t in_features() const { return codes.size(1); }
    bool    is_lut() const { return lut.defined(); }
};

int64_t n_groups(int64_t in_features, int64_t group_size);  // ceil(I/G), 1 when G == 0

// fp32 [O, I]: scale * (code - zero) per group, or lut[row][code]; divided by in_scale per
// column when present.
at::Tensor dequantize(const QuantizedLinear& q);

// Storage of the dense part in bits: codes (bit-packed rows padded to 32-bit words, as stored),
// fp16 scales and zeros or LUTs, g_idx (32 bits per column) and in_scale (16 bits per column;
// AWQ folds it into the preceding operation, it is counted anyway) when present.
int64_t dense_storage_bits(const QuantizedLinear& q);

}  // namespace rq::quant
