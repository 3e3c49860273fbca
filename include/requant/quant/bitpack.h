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

// Flags as bits, most significant first (numpy.packbits' order): bool [n] -> uint8 [ceil(n/8)],
// and back to bool [n].
at::Tensor pack_flags(const at::Tensor& flags);
at::Tensor unpack_flags(const at::Tensor& bytes, int64_t n);

// 16-bit words (int16 [..., W], read as unsigned) as their big-endian bytes, uint8 [..., 2 W]:
// a bitstream stored most significant bit first stays one in byte order; and back.
at::Tensor words_to_bytes(const at::Tensor& words);
at::Tensor bytes_to_words(const at::Tensor& bytes);

}  // namespace rq::quant
