#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>

// Bit packing of codes: each row is one little-endian bitstream of I*bits bits (code j occupies
// bits [j*bits, (j+1)*bits)), padded to whole 32-bit words: 3-bit rows of 688 codes take 65
// words. The on-disk layout of the checkpoint (DESIGN.md §4).

namespace rq::quant {

int64_t packed_words(int64_t in_features, int bits);  // ceil(I*bits/32)

// codes: uint8 [O, I], every value < 2^bits. Returns int32 [O, packed_words]. Throws ShapeError
// for a code out of range or a bad bit width.
at::Tensor pack_codes(const at::Tensor& codes, int bits);
// Inverse of pack_codes: uint8 [O, I].
at::Tensor unpack_codes(const at::Tensor& packed, int bits, int64_t in_features);

}  // namespace rq::quant
