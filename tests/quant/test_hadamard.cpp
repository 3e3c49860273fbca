// Incoherence transforms (requant/quant/hadamard.h): the fast Walsh-Hadamard against the
// explicit matrix, every transform orthogonal to 1e-6 and undone exactly (to rounding), on the
// sizes of the bundled models (powers of two, 688 = 43 x 16, 176 = 11 x 16) and 5632 = 11 x 512,
// the two-sided weight transform against its definition, and the Hessian's trace kept.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "requant/error.h"
#include "requant/quant/hadamard.h"

namespace rq::quant {
namespace {

double max_abs(const at::Tensor& t) {
    return t.abs().max().item<double>();
}

TEST(Hadamard, FastTransformMatchesTheMatrix) {
    auto gen = at::detail::createCPUGenerator(3);
    for (int64_t n : {1, 2, 16, 128, 1024}) {
        const at::Tensor x = at::randn({5, n}, gen, at::kDouble);
        at::Tensor       y = x.clone();
        fwht_(y);
        EXPECT_LT(max_abs(y - x.matmul(hadamard_matrix(n))), 1e-12) << n;
    }
    at::Tensor bad = at::zeros({3, 12});
    EXPECT_THROW(fwht_(bad), ShapeError);
}

TEST(Hadamard, EveryTransformIsOrthogonalAndUndone) {
    auto gen = at::detail::createCPUGenerator(4);
    for (int64_t n : {64, 128, 256, 176, 688, 5632}) {
        const Incoherence u(n, 17);
        const at::Tensor  m = u.matrix_ref();
        EXPECT_LT(max_abs(m.matmul(m.t()) - at::eye(n, at::kDouble)), 1e-6) << n;
        const at::Tensor x = at::randn({4, n}, gen, at::kDouble);
        EXPECT_LT(max_abs(u.apply(x) - x.matmul(m)), 1e-10) << n << ": fast against matrix";
        EXPECT_LT(max_abs(u.undo(u.apply(x)) - x), 1e-10) << n << ": undone";
        const at::Tensor xf = x.to(at::kFloat);
        EXPECT_LT(max_abs(u.undo(u.apply(xf)) - xf), 1e-5) << n << ": undone in fp32";
    }
    EXPECT_EQ(Incoherence(688, 1).odd(), 43);
    EXPECT_EQ(Incoherence(256, 1).odd(), 1);
}

TEST(Hadamard, WeightsAndHessianBothSides) {
    auto              gen = at::detail::createCPUGenerator(5);
    const Incoherence r(176, 1), c(688, 2);
    const at::Tensor  w  = at::randn({176, 688}, gen, at::kDouble);
    const at::Tensor  wr = transform_both(r, c, w);
    EXPECT_LT(max_abs(wr - r.matrix_ref().t().matmul(w).matmul(c.matrix_ref())), 1e-10);
    EXPECT_LT(max_abs(untransform_both(r, c, wr) - w), 1e-10);
    // H -> U^T diag(S) H diag(S) U keeps tr(W H W^T) for the transformed pair.
    const at::Tensor x  = at::randn({300, 688}, gen, at::kDouble);
    const at::Tensor h  = x.t().matmul(x);
    const at::Tensor hr = transform_both(c, c, h);
    const double     a  = (w.matmul(h) * w).sum().item<double>();
    const double     b  = (wr.matmul(hr) * wr).sum().item<double>();
    EXPECT_NEAR(a, b, 1e-9 * a);
}

}  // namespace
}  // namespace rq::quant
