// Bit packing of quantization codes (requant/quant/bitpack.h): every row is one little-endian
// bitstream padded to whole 32-bit words. Checked byte for byte: round trips over every width,
// a hand-computed stream, zero padding, and the errors. Not a test of what the codes mean.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "requant/error.h"
#include "requant/quant/bitpack.h"

namespace rq::quant {
namespace {

constexpr int              kMinBits = 2, kMaxBits = 8;
constexpr int64_t          kRows   = 5;
const std::vector<int64_t> kWidths = {1, 31, 32, 33, 64, 172, 688, 1000};

// uint8 [O, I] codes, uniform in [0, 2^bits).
at::Tensor random_codes(int64_t O, int64_t I, int bits, uint64_t seed) {
    auto gen = at::detail::createCPUGenerator(seed);
    return at::randint(0, int64_t(1) << bits, {O, I}, gen, at::kByte);
}

// Number of positions where a and b (same shape, uint8) differ; reports the first one.
int64_t count_wrong(const at::Tensor& got, const at::Tensor& want, const char* what) {
    const at::Tensor bad = got.ne(want);
    const int64_t    n   = bad.sum().item<int64_t>();
    if (n > 0) {
        const at::Tensor idx = bad.nonzero()[0];
        const int64_t    r = idx[0].item<int64_t>(), c = idx[1].item<int64_t>();
        ADD_FAILURE() << what << ": #wrong " << n << ", first at (" << r << ", " << c
                      << "): expected " << want[r][c].item<int64_t>() << ", got "
                      << got[r][c].item<int64_t>();
    }
    return n;
}

uint32_t word(const at::Tensor& packed, int64_t r, int64_t k) {
    return uint32_t(packed[r][k].item<int32_t>());
}

TEST(Bitpack, PackedWords) {
    EXPECT_EQ(packed_words(688, 3), 65);  // DESIGN.md §4: "3-bit rows of 688 codes take 65 words"
    EXPECT_EQ(packed_words(688, 4), 86);
    EXPECT_EQ(packed_words(32, 1), 1);
    EXPECT_EQ(packed_words(33, 1), 2);
    EXPECT_EQ(packed_words(1, 8), 1);
    EXPECT_EQ(packed_words(0, 4), 0);
    for (int bits = kMinBits; bits <= kMaxBits; ++bits)
        for (int64_t I : kWidths) EXPECT_EQ(packed_words(I, bits), (I * bits + 31) / 32);
}

TEST(Bitpack, RoundTripIsByteEqual) {
    int64_t n_wrong = 0;
    for (int bits = kMinBits; bits <= kMaxBits; ++bits)
        for (int64_t I : kWidths) {
            SCOPED_TRACE("bits " + std::to_string(bits) + " width " + std::to_string(I));
            const at::Tensor codes  = random_codes(kRows, I, bits, 1000 * bits + I);
            const at::Tensor packed = pack_codes(codes, bits);
            ASSERT_EQ(packed.scalar_type(), at::kInt);
            ASSERT_EQ(packed.sizes(), (std::vector<int64_t>{kRows, packed_words(I, bits)}));
            const at::Tensor back = unpack_codes(packed, bits, I);
            ASSERT_EQ(back.scalar_type(), at::kByte);
            ASSERT_EQ(back.sizes(), codes.sizes());
            n_wrong += count_wrong(back, codes, "unpack(pack(codes))");
        }
    EXPECT_EQ(n_wrong, 0);
}

TEST(Bitpack, ExtremeCodesRoundTrip) {
    // All-ones codes fill every data bit: catches a mask or shift that drops the top bit.
    for (int bits = kMinBits; bits <= kMaxBits; ++bits) {
        const at::Tensor codes = at::full({2, 1000}, (1 << bits) - 1, at::kByte);
        EXPECT_EQ(count_wrong(unpack_codes(pack_codes(codes, bits), bits, 1000), codes, "max code"),
                  0)
            << "bits " << bits;
    }
}

TEST(Bitpack, HandComputedThreeBitStream) {
    // Code j occupies bits [3j, 3j+3). Codes 0..9 fill bits 0..29; code 10 (7 = 0b111) straddles
    // the word boundary: bits 30, 31 of word 0 and bit 0 of word 1; code 11 (6 = 0b110) sits at
    // bits 1..3 of word 1. Word 1 = 0b1101 = 0xD.
    const std::vector<uint8_t> c  = {1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 7, 6};
    uint32_t                   w0 = 0;
    for (int j = 0; j < 10; ++j) w0 |= uint32_t(c[j]) << (3 * j);
    w0 |= uint32_t(7 & 3) << 30;
    ASSERT_EQ(w0, 0xD11F58D1u);  // the hand sum above, as a constant

    at::Tensor codes = at::empty({1, int64_t(c.size())}, at::kByte);
    for (std::size_t j = 0; j < c.size(); ++j) codes[0][int64_t(j)] = c[j];
    const at::Tensor packed = pack_codes(codes, 3);
    ASSERT_EQ(packed.sizes(), (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(word(packed, 0, 0), 0xD11F58D1u);
    EXPECT_EQ(word(packed, 0, 1), 0xDu);
    EXPECT_TRUE(at::equal(unpack_codes(packed, 3, 12), codes));
}

TEST(Bitpack, HandComputedEightBitStream) {
    at::Tensor    codes   = at::empty({2, 3}, at::kByte);
    const uint8_t v[2][3] = {{0xAB, 0xCD, 0x01}, {0xFF, 0x00, 0x80}};
    for (int r = 0; r < 2; ++r)
        for (int j = 0; j < 3; ++j) codes[r][j] = v[r][j];
    const at::Tensor packed = pack_codes(codes, 8);
    ASSERT_EQ(packed.sizes(), (std::vector<int64_t>{2, 1}));
    EXPECT_EQ(word(packed, 0, 0), 0x0001CDABu);  // little-endian: first code in the low byte
    EXPECT_EQ(word(packed, 1, 0), 0x008000FFu);  // rows are separate streams
}

TEST(Bitpack, PaddingBitsAreZero) {
    int64_t n_dirty = 0;
    for (int bits = kMinBits; bits <= kMaxBits; ++bits)
        for (int64_t I : kWidths) {
            const int64_t used = (I * bits) % 32;  // data bits in the last word
            if (used == 0) continue;
            const at::Tensor codes  = at::full({kRows, I}, (1 << bits) - 1, at::kByte);
            const at::Tensor packed = pack_codes(codes, bits);
            const int64_t    last   = packed.size(1) - 1;
            const uint32_t   pad    = ~((uint32_t(1) << used) - 1);
            for (int64_t r = 0; r < kRows; ++r) {
                const uint32_t w = word(packed, r, last);
                if (w & pad) {
                    ++n_dirty;
                    ADD_FAILURE() << "bits " << bits << " width " << I << " row " << r
                                  << ": last word " << std::hex << w << " has padding bits set";
                }
                EXPECT_EQ(w, ~pad) << "bits " << bits << " width " << I << " row " << r;
            }
        }
    EXPECT_EQ(n_dirty, 0);
}

TEST(Bitpack, CodeOutOfRangeIsShapeError) {
    for (int bits = kMinBits; bits < kMaxBits; ++bits) {
        at::Tensor codes = random_codes(3, 40, bits, bits);
        EXPECT_NO_THROW(pack_codes(codes, bits));
        codes[2][39] = 1 << bits;
        EXPECT_THROW(pack_codes(codes, bits), ShapeError) << "bits " << bits;
    }
}

TEST(Bitpack, BadInputsAreShapeErrors) {
    const at::Tensor codes = random_codes(2, 10, 4, 7);
    EXPECT_THROW(pack_codes(codes.to(at::kInt), 4), ShapeError);
    EXPECT_THROW(pack_codes(codes.to(at::kFloat), 4), ShapeError);
    EXPECT_THROW(pack_codes(codes.flatten(), 4), ShapeError);
    EXPECT_THROW(pack_codes(codes, 0), ShapeError);
    EXPECT_THROW(pack_codes(codes, 9), ShapeError);
    const at::Tensor packed = pack_codes(codes, 4);
    EXPECT_THROW(unpack_codes(packed.to(at::kLong), 4, 10), ShapeError);
    EXPECT_THROW(unpack_codes(packed.to(at::kByte), 4, 10), ShapeError);
    EXPECT_THROW(unpack_codes(packed, 4, 20), ShapeError);  // 20 codes need 3 words, not 2
    EXPECT_THROW(unpack_codes(packed, 9, 10), ShapeError);
}

// QTIP's sign vectors and tile words as stored: flags in numpy.packbits order, words as their
// big-endian bytes, both round trips exact.
TEST(Bitpack, FlagsAndWordsAsBytes) {
    const at::Tensor flags = at::tensor({1, 0, 1, 1, 0, 0, 0, 0, 1, 1}, at::kInt).to(at::kBool);
    const at::Tensor bytes = pack_flags(flags);
    ASSERT_EQ(bytes.numel(), 2);
    EXPECT_EQ(bytes[0].item<int64_t>(), 0xB0);  // 1011 0000
    EXPECT_EQ(bytes[1].item<int64_t>(), 0xC0);  // 11 then padding
    EXPECT_TRUE(at::equal(unpack_flags(bytes, 10), flags));
    EXPECT_THROW(unpack_flags(bytes, 17), ShapeError);

    auto             gen   = at::detail::createCPUGenerator(5);
    const at::Tensor words = at::randint(-32768, 32768, {3, 2, 8}, gen, at::kShort);
    const at::Tensor b     = words_to_bytes(words);
    ASSERT_EQ(b.sizes(), (at::IntArrayRef{3, 2, 16}));
    const auto w0 = uint16_t(words[1][1][3].item<int64_t>());
    EXPECT_EQ(b[1][1][6].item<int64_t>(), w0 >> 8);
    EXPECT_EQ(b[1][1][7].item<int64_t>(), w0 & 0xFF);
    EXPECT_TRUE(at::equal(bytes_to_words(b), words));
    EXPECT_THROW(bytes_to_words(b.narrow(2, 0, 15)), ShapeError);
}

}  // namespace
}  // namespace rq::quant
