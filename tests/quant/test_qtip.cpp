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

const at::Tensor& table() {
    static const at::Tensor t = hyb_table(1, int64_t{1} << 16, 12);
    return t;
}

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
    const BitshiftTrellis code(2, TrellisCode::Hyb, table());
    const QtipLinear      q = qtip_quantize(w, h, code, {});
    EXPECT_EQ(q.words.sizes(), (at::IntArrayRef{4, 8, 32}));  // 16 x 2 bits x 256 / 16 words
    GptqParams gp;
    gp.bits             = 2;
    gp.group_size       = 64;
    const at::Tensor g  = dequantize(gptq_quantize(w, h, gp));
    const double     eq = proxy(w, q.w_hat, h), eg = proxy(w, g, h);
    std::printf("output proxy at 2 bits: QTIP %.4f, GPTQ g64 %.4f\n", eq, eg);
    EXPECT_LT(eq, eg) << "QTIP 2-bit proxy " << eq << ", GPTQ 2-bit g64 " << eg;
    EXPECT_LT(eq, 0.2);
}

TEST(Qtip, DimensionsNotMultiplesOf16ArePadded) {
    auto                  gen = at::detail::createCPUGenerator(4);
    const at::Tensor      w   = at::randn({20, 36}, gen, at::kFloat);
    const at::Tensor      h   = hessian(5, 36);
    const BitshiftTrellis code(3, TrellisCode::OneMad);
    const QtipLinear      q = qtip_quantize(w, h, code, {});
    EXPECT_EQ(q.rows_padded, 32);
    EXPECT_EQ(q.cols_padded, 48);
    EXPECT_EQ(q.w_hat.sizes(), w.sizes());
    EXPECT_LT(proxy(w, q.w_hat, h), 0.1);  // 3 bits
}

}  // namespace
}  // namespace rq::quant
