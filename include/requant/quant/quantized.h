#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "requant/quant/trellis.h"

// A quantized linear weight, dense part: low-bit codes with either uniform (scale, zero) groups
// along the input dimension or a per-row lookup table of non-uniform levels; or, for QTIP,
// trellis-coded 16 x 16 tiles of the weight in a transformed basis (quant/qtip.h).
// O = out_features, I = in_features, G = group_size (0 = one group per row), NG = ceil(I/G);
// O', I' = O, I rounded up to multiples of 16.

namespace rq::quant {

// QTIP's dense part: W = crop(diag(S_rows) U_rows (wscale X) U_cols^T diag(S_cols)), X [O', I']
// the trellis values of the tiles (row-major within a tile, tiles row-major), U the
// Incoherence transform of each padded dimension (its Kronecker factor, for dimensions that
// are not powers of two, is shared by the model: kron_factor(m, factor_seed)).
struct TrellisDense {
    TrellisCode code = TrellisCode::Hyb;
    int64_t     rows = 0, cols = 0;      // O, I
    float       wscale      = 0;         // as stored: fp32
    uint64_t    factor_seed = 0;         // of the model's Kronecker factors
    at::Tensor  signs_rows, signs_cols;  // bool [O'], [I']: true where the sign is -1
    at::Tensor  words;                   // int16 [O'/16, I'/16, 16 K]: each tile's 256 K bits
};

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
    at::Tensor out_scale;       // fp16 [O]: AWQ's scale r of the next linear folded into this
                                // one's rows (up_proj by down_proj's; v_proj by o_proj's where
                                // o is scaled): the codes quantize diag(1/r) W diag(s), so the
                                // weight is diag(r) dequant(codes) diag(s)^-1; empty = none
    TrellisDense trellis;       // QTIP (K = bits); then codes and the tensors above are empty

    int64_t out_features() const { return is_trellis() ? trellis.rows : codes.size(0); }
    int64_t in_features() const { return is_trellis() ? trellis.cols : codes.size(1); }
    bool    is_lut() const { return lut.defined(); }
    bool    is_trellis() const { return trellis.words.defined(); }
};

int64_t n_groups(int64_t in_features, int64_t group_size);  // ceil(I/G), 1 when G == 0

// fp32 [O, I]: scale * (code - zero) per group, or lut[row][code]; divided by in_scale per
// column and multiplied by out_scale per row when present (the weight in the original basis);
// QTIP's decoded tiles taken back to the original basis.
at::Tensor dequantize(const QuantizedLinear& q);

// Storage of the dense part in bits: codes (bit-packed rows padded to 32-bit words, as stored),
// fp16 scales and zeros or LUTs, g_idx (32 bits per column) when present. AWQ's in_scale and
// out_scale cost nothing: a deployed model folds them away, as the reference does (the
// preceding RMSNorm's weight divided by in_scale for q/k/v and gate/up; down_proj's in_scale
// and up_proj's out_scale, o_proj's and v_proj's, cancel; store/checkpoint.h). QTIP: K bits
// per padded weight, one bit per padded row and column (signs) and the fp32 Wscale; what the
// model shares (HYB's table, Kronecker factors) is counted once per model (qtip_shared_bits).
int64_t dense_storage_bits(const QuantizedLinear& q);

}  // namespace rq::quant
