// QTIP on one linear (requant/quant/qtip.h): the block LDL factorisation, padding of
// dimensions that are not multiples of 16, and the output proxy error at 2 bits against GPTQ
// 2-bit (the comparison) on a linear with correlated inputs.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstdio>

#include "requant/error.h"
#include "requant/quant/gptq.h"
#include "requant/quant/qtip.h"
#include "requant/quant/quantized.h"

namespace rq::quant {
namespace {

// Correlated inputs: X = Z M with a random mixing M, so H = X^T X is far from diagonal.
at::Tensor hessian(uint64_t seed, int64_t n) {
    auto             gen = at::detail::createCPUGenerator(seed);
    const at::Tensor z   = at::randn({4 * n, n}, gen, at::kDouble);
    const at::Tensor m   = at::randn({n, n}, gen, at::kDouble) * 0.3 + at::eye(n, at::kDouble);
    const at::Tensor x   = z.matmul(m);
    return x.t().matmul(x);
}

double proxy(const at::Tensor& w, const at::Tensor& w_hat, const at::Tensor& h) {
    const at::Tensor wd = w.to(at::kDouble), d = wd - w_hat.to(at::kDouble);
    return (d.matmul(h) * d).sum().item<double>() / (wd.matmul(h) * wd).sum().item<double>();
}

TEST(Qtip, BlockLdlFactorsTheHessian) {
    const at::Tensor h = hessian(1, 64);
    at::Tensor       l, d;
    block_ldl(h, l, d);
    EXPECT_LT((l.matmul(d).matmul(l.t()) - h).abs().max().item<double>(),
              1e-8 * h.abs().max().item<double>());
    for (int64_t i = 0; i < 64; i += 16)
        for (int64_t j = 0; j < 64; j += 16) {
            const at::Tensor lb = l.narrow(0, i, 16).narrow(1, j, 16);
            if (i == j) {
                EXPECT_LT((lb - at::eye(16, at::kDouble)).abs().max().item<double>(), 1e-10);
            }
            if (j > i) {
                EXPECT_EQ(lb.abs().max().item<double>(), 0.0);
            }
            if (i != j) {
                EXPECT_EQ(d.narrow(0, i, 16).narrow(1, j, 16).abs().max().item<double>(), 0.0);
            }
        }
    EXPECT_THROW(block_ldl(-h, l, d), NumericError);
}

TEST(Qtip, TwoBitsBeatGptqTwoBitsOnTheOutputProxy) {
    auto                  gen = at::detail::createCPUGenerator(2);
    const at::Tensor      w   = at::randn({64, 128}, gen, at::kFloat) * 0.02;
    const at::Tensor      h   = hessian(3, 128);
    const QuantizedLinear q   = qtip_quantize(w, h, 2, {});
    EXPECT_EQ(q.trellis.words.sizes(), (at::IntArrayRef{4, 8, 32}));  // 2 bits x 256 / 16 words
    EXPECT_EQ(dense_storage_bits(q), 64 * 128 * 2 + 64 + 128 + 32);   // + signs + Wscale
    GptqParams gp;
    gp.bits             = 2;
    gp.group_size       = 64;
    const at::Tensor g  = dequantize(gptq_quantize(w, h, gp));
    const double     eq = proxy(w, dequantize(q), h), eg = proxy(w, g, h);
    std::printf("output proxy at 2 bits: QTIP %.4f, GPTQ g64 %.4f\n", eq, eg);
    EXPECT_LT(eq, eg) << "QTIP 2-bit proxy " << eq << ", GPTQ 2-bit g64 " << eg;
    EXPECT_LT(eq, 0.2);
}

TEST(Qtip, DimensionsNotMultiplesOf16ArePadded) {
    auto             gen = at::detail::createCPUGenerator(4);
    const at::Tensor w   = at::randn({20, 36}, gen, at::kFloat);
    const at::Tensor h   = hessian(5, 36);
    QtipParams       p;
    p.code                  = TrellisCode::OneMad;
    const QuantizedLinear q = qtip_quantize(w, h, 3, p);
    EXPECT_EQ(q.trellis.words.sizes(), (at::IntArrayRef{2, 3, 48}));  // 32 x 48 padded
    EXPECT_EQ(q.trellis.signs_rows.numel(), 32);
    EXPECT_EQ(q.trellis.signs_cols.numel(), 48);
    EXPECT_EQ(q.out_features(), 20);
    EXPECT_EQ(q.in_features(), 36);
    EXPECT_EQ(dense_storage_bits(q), 32 * 48 * 3 + 32 + 48 + 32);  // the padding is counted
    EXPECT_EQ(dequantize(q).sizes(), w.sizes());
    EXPECT_LT(proxy(w, dequantize(q), h), 0.1);  // 3 bits
}

// The seeds shape the result: another sign seed gives other signs and another (equally good)
// weight; the same seed the same bits; the Kronecker factor is shared through factor_seed.
TEST(Qtip, SeedsAreDeterministicAndShapeTheSigns) {
    auto             gen = at::detail::createCPUGenerator(6);
    const at::Tensor w   = at::randn({48, 176}, gen, at::kFloat);  // 176 = 11 x 16
    const at::Tensor h   = hessian(7, 176);
    QtipParams       p;
    p.code                  = TrellisCode::ThreeInst;
    p.sign_seed             = 3;
    p.factor_seed           = 9;
    const QuantizedLinear a = qtip_quantize(w, h, 2, p), b = qtip_quantize(w, h, 2, p);
    EXPECT_TRUE(at::equal(a.trellis.words, b.trellis.words));
    EXPECT_TRUE(at::equal(dequantize(a), dequantize(b)));
    p.sign_seed             = 4;
    const QuantizedLinear c = qtip_quantize(w, h, 2, p);
    EXPECT_FALSE(at::equal(a.trellis.signs_cols, c.trellis.signs_cols));
    EXPECT_FALSE(at::equal(dequantize(a), dequantize(c)));
    EXPECT_NEAR(proxy(w, dequantize(a), h), proxy(w, dequantize(c), h), 0.05);
    EXPECT_EQ(qtip_odd_parts({48, 176, 688, 256}), (std::vector<int64_t>{3, 11, 43}));
    EXPECT_EQ(qtip_shared_bits(TrellisCode::Hyb, {11}), 512 * 2 * 16 + 11 * 11 * 64);
    EXPECT_EQ(qtip_shared_bits(TrellisCode::OneMad, {}), 0.0);
}

}  // namespace
}  // namespace rq::quant
