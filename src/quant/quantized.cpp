// Dequantization and storage accounting of the dense part (requant/quant/quantized.h).
#include "requant/quant/quantized.h"

#include <ATen/ATen.h>

#include "requant/quant/bitpack.h"
#include "requant/quant/qtip.h"

namespace rq::quant {

int64_t n_groups(int64_t in_features, int64_t group_size) {
    return group_size <= 0 ? 1 : (in_features + group_size - 1) / group_size;
}

static at::Tensor dequantize_codes(const QuantizedLinear& q) {
    if (q.is_lut()) return q.lut.to(at::kFloat).gather(1, q.codes.to(at::kLong));
    const int64_t I     = q.in_features();
    at::Tensor    g     = q.g_idx.defined()   ? q.g_idx.to(at::kLong)
                          : q.group_size <= 0 ? at::zeros({I}, at::kLong)
                                              : at::arange(I, at::kLong).div(q.group_size, "floor");
    at::Tensor    scale = q.scales.to(at::kFloat).index_select(1, g);  // [O, I]
    at::Tensor    zero  = q.zeros.to(at::kFloat).index_select(1, g);
    return (q.codes.to(at::kFloat) - zero) * scale;
}

at::Tensor dequantize(const QuantizedLinear& q) {
    if (q.is_trellis()) return qtip_dequantize(q);
    at::Tensor w = dequantize_codes(q);
    if (q.in_scale.defined()) w = w / q.in_scale.to(at::kFloat);
    return q.out_scale.defined() ? w * q.out_scale.to(at::kFloat).unsqueeze(1) : w;
}

int64_t dense_storage_bits(const QuantizedLinear& q) {
    if (q.is_trellis()) {
        const TrellisDense& t = q.trellis;
        return t.words.numel() * 16 + t.signs_rows.numel() + t.signs_cols.numel() + 32;
    }
    const int64_t O = q.out_features(), I = q.in_features();
    int64_t       bits = O * packed_words(I, q.bits) * 32;
    if (q.is_lut())
        bits += q.lut.numel() * 16;
    else
        bits += (q.scales.numel() + q.zeros.numel()) * 16;
    if (q.g_idx.defined()) bits += I * 32;
    return bits;
}

}  // namespace rq::quant
