// Row bitstream packing (requant/quant/bitpack.h).
#include "requant/quant/bitpack.h"

#include <ATen/ATen.h>

#include <vector>

#include "requant/error.h"

namespace rq::quant {

int64_t packed_words(int64_t in_features, int bits) {
    return (in_features * bits + 31) / 32;
}

static void check_bits(int bits) {
    if (bits < 1 || bits > 8)
        throw ShapeError("bit width " + std::to_string(bits) + " outside 1..8");
}

at::Tensor pack_codes(const at::Tensor& codes, int bits) {
    check_bits(bits);
    if (codes.scalar_type() != at::kByte || codes.dim() != 2)
        throw ShapeError("pack_codes: codes must be uint8 [O, I]");
    const at::Tensor c = codes.contiguous();
    const int64_t    O = c.size(0), I = c.size(1), W = packed_words(I, bits);
    if (c.numel() > 0 && c.max().item<int64_t>() >= (int64_t(1) << bits))
        throw ShapeError("pack_codes: a code does not fit in " + std::to_string(bits) + " bits");
    at::Tensor     out = at::zeros({O, W}, at::kInt);
    const uint8_t* src = c.data_ptr<uint8_t>();
    auto*          dst = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
    for (int64_t r = 0; r < O; ++r) {
        const uint8_t* row  = src + r * I;
        uint32_t*      word = dst + r * W;
        uint64_t       acc  = 0;  // bits not yet written, lowest first
        int            n    = 0;
        int64_t        k    = 0;
        for (int64_t j = 0; j < I; ++j) {
            acc |= uint64_t(row[j]) << n;
            n += bits;
            if (n >= 32) {
                word[k++] = uint32_t(acc);
                acc >>= 32;
                n -= 32;
            }
        }
        if (n > 0) word[k] = uint32_t(acc);
    }
    return out;
}

at::Tensor unpack_codes(const at::Tensor& packed, int bits, int64_t in_features) {
    check_bits(bits);
    const int64_t W = packed_words(in_features, bits);
    if (packed.scalar_type() != at::kInt || packed.dim() != 2 || packed.size(1) != W)
        throw ShapeError("unpack_codes: expected int32 [O, " + std::to_string(W) + "]");
    const at::Tensor p    = packed.contiguous();
    const int64_t    O    = p.size(0);
    at::Tensor       out  = at::empty({O, in_features}, at::kByte);
    const auto*      src  = reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>());
    uint8_t*         dst  = out.data_ptr<uint8_t>();
    const uint64_t   mask = (uint64_t(1) << bits) - 1;
    for (int64_t r = 0; r < O; ++r) {
        const uint32_t* word = src + r * W;
        uint64_t        acc  = 0;
        int             n    = 0;
        int64_t         k    = 0;
        for (int64_t j = 0; j < in_features; ++j) {
            if (n < bits) {
                acc |= uint64_t(word[k++]) << n;
                n += 32;
            }
            dst[r * in_features + j] = uint8_t(acc & mask);
            acc >>= bits;
            n -= bits;
        }
    }
    return out;
}

at::Tensor pack_flags(const at::Tensor& flags) {
    const at::Tensor f   = flags.to(at::kBool).contiguous().view({-1});
    const int64_t    n   = f.numel();
    at::Tensor       out = at::zeros({(n + 7) / 8}, at::kByte);
    const bool*      src = f.data_ptr<bool>();
    uint8_t*         dst = out.data_ptr<uint8_t>();
    for (int64_t i = 0; i < n; ++i)
        if (src[i]) dst[i / 8] |= uint8_t(0x80u >> (i % 8));
    return out;
}

at::Tensor unpack_flags(const at::Tensor& bytes, int64_t n) {
    if (bytes.scalar_type() != at::kByte || bytes.numel() != (n + 7) / 8)
        throw ShapeError("unpack_flags: " + std::to_string(n) + " flags need " +
                         std::to_string((n + 7) / 8) + " uint8 bytes, got " +
                         std::to_string(bytes.numel()));
    const at::Tensor b   = bytes.contiguous();
    at::Tensor       out = at::empty({n}, at::kBool);
    const uint8_t*   src = b.data_ptr<uint8_t>();
    bool*            dst = out.data_ptr<bool>();
    for (int64_t i = 0; i < n; ++i) dst[i] = (src[i / 8] >> (7 - i % 8)) & 1u;
    return out;
}

at::Tensor words_to_bytes(const at::Tensor& words) {
    const at::Tensor     w  = words.contiguous();
    const at::Tensor     hi = w.bitwise_right_shift(8).bitwise_and(0xFF).to(at::kByte);
    const at::Tensor     lo = w.bitwise_and(0xFF).to(at::kByte);
    std::vector<int64_t> shape(w.sizes().begin(), w.sizes().end());
    shape.back() *= 2;
    return at::stack({hi, lo}, -1).reshape(shape);
}

at::Tensor bytes_to_words(const at::Tensor& bytes) {
    if (bytes.scalar_type() != at::kByte || bytes.dim() < 1 || bytes.size(-1) % 2 != 0)
        throw ShapeError("bytes_to_words: expected uint8 [..., 2 W]");
    std::vector<int64_t> shape(bytes.sizes().begin(), bytes.sizes().end());
    shape.back() /= 2;
    std::vector<int64_t> pairs = shape;
    pairs.push_back(2);
    const at::Tensor b = bytes.contiguous().view(pairs).to(at::kInt);
    const at::Tensor v = b.select(-1, 0).bitwise_left_shift(8).bitwise_or(b.select(-1, 1));
    return v.to(at::kShort);  // 0..65535 wraps to the int16 of the same bits
}

}  // namespace rq::quant
