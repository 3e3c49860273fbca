// CSR sparse parts: round trips, storage accounting, and the selection rules.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "requant/error.h"
#include "requant/quant/sparse.h"

namespace rq::quant {
namespace {

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
    at::Generator g = at::detail::createCPUGenerator(seed);
    return at::normal(0.0, 1.0, shape, g);
}

TEST(Sparse, CsrRoundTripKeepsMaskedValuesInFp16) {
    for (uint64_t seed : {1u, 2u, 3u}) {
        const at::Tensor w    = randn({37, 91}, seed);
        const at::Tensor mask = randn({37, 91}, seed + 100) > 1.5;  // ~7%, some empty rows
        const SparseCsr  s    = csr_from_mask(w, mask);
        EXPECT_EQ(s.nnz(), mask.sum().item<int64_t>());
        EXPECT_EQ(s.indptr.numel(), 38);
        EXPECT_EQ(s.indptr[-1].item<int64_t>(), s.nnz());
        const at::Tensor want = at::where(mask, w.to(at::kHalf).to(at::kFloat), at::zeros_like(w));
        EXPECT_TRUE(at::equal(csr_to_dense(s), want)) << "seed " << seed;
        // Column indices ascend within each row.
        for (int64_t r = 0; r < 37; ++r) {
            const int64_t a = s.indptr[r].item<int64_t>(), b = s.indptr[r + 1].item<int64_t>();
            for (int64_t i = a + 1; i < b; ++i)
                EXPECT_LT(s.indices[i - 1].item<int>(), s.indices[i].item<int>());
        }
    }
}

TEST(Sparse, EmptyAndFullMasks) {
    const at::Tensor w = randn({4, 5}, 7);
    const SparseCsr  e = csr_from_mask(w, at::zeros({4, 5}, at::kBool));
    EXPECT_EQ(e.nnz(), 0);
    EXPECT_TRUE(at::equal(csr_to_dense(e), at::zeros({4, 5})));
    const SparseCsr f = csr_from_mask(w, at::ones({4, 5}, at::kBool));
    EXPECT_EQ(f.nnz(), 20);
    EXPECT_TRUE(at::equal(csr_to_dense(f), w.to(at::kHalf).to(at::kFloat)));
}

TEST(Sparse, StorageBits) {
    const at::Tensor w    = randn({10, 100}, 9);
    const at::Tensor mask = topk_mask(w.abs(), 25);
    const SparseCsr  s    = csr_from_mask(w, mask);
    EXPECT_EQ(csr_paper_bits(s), 25 * 48);
    EXPECT_EQ(csr_storage_bits(s), 25 * 48 + 11 * 32);
}

TEST(Sparse, TopkPicksLargestAndBreaksTiesByIndex) {
    const at::Tensor score = at::tensor({1.0, 3.0, 3.0, 2.0, 3.0, 0.0}).view({2, 3});
    const at::Tensor m     = topk_mask(score, 2).view({-1});
    EXPECT_TRUE(m[1].item<bool>() && m[2].item<bool>());
    EXPECT_FALSE(m[4].item<bool>()) << "tie at 3.0 goes to the lower flat index";
    EXPECT_EQ(topk_mask(score, 0).sum().item<int64_t>(), 0);
    EXPECT_EQ(topk_mask(score, 100).sum().item<int64_t>(), 6);
}

TEST(Sparse, IqrRuleTakesTheReferenceQuartilesAndSkipsExcludedWeights) {
    // 100 values -50..49 in a shuffled [10, 10]: q1 = v[25] = -25, q3 = v[75] = 25 (no
    // interpolation), T(rho = 0.5) = max(|-25 - 25|, |25 + 25|) = 50: only -50 is an outlier.
    auto             gen = at::detail::createCPUGenerator(3);
    const at::Tensor w   = (at::randperm(100, gen, at::kLong) - 50).to(at::kFloat).view({10, 10});
    const IqrRule    rule(w);
    EXPECT_EQ(rule.threshold(0.5), 50.0);
    EXPECT_EQ(rule.threshold(0.0), 25.0);
    EXPECT_EQ(rule.count(0.0), 51);       // |w| >= 25: -50..-25 (26) and 25..49 (25)
    const at::Tensor ex = w.abs() >= 40;  // excluded: counted and masked never
    const IqrRule    skip(w, ex);
    EXPECT_EQ(skip.threshold(0.0), 25.0) << "the quartiles are those of all of w";
    EXPECT_EQ(skip.count(0.0), 51 - 21);  // less -50..-40 and 40..49
    EXPECT_TRUE(at::equal(skip.mask(0.0), (w.abs() >= 25) & ~ex));
    EXPECT_EQ(skip.mask(0.0).sum().item<int64_t>(), skip.count(0.0));
}

TEST(Sparse, IqrRuleSelectsTheTailsAndShrinksWithRho) {
    const at::Tensor w    = randn({64, 256}, 11);
    int64_t          prev = w.numel() + 1;
    for (double rho : {0.25, 0.5, 1.0, 1.5}) {
        const int64_t n = iqr_outlier_count(w, rho);
        EXPECT_LT(n, prev) << "rho " << rho;
        prev               = n;
        const at::Tensor m = iqr_outlier_mask(w, rho);
        if (n > 0) {  // every selected weight is larger in magnitude than every other one
            EXPECT_GE(w.abs().masked_select(m).min().item<double>(),
                      w.abs().masked_select(~m).max().item<double>());
        }
    }
    // Normal data: q3 - q1 = 1.349 sigma; rho = 1.5 gives T = 2.698 sigma, ~0.7% in the tails.
    const double frac = double(iqr_outlier_count(w, 1.5)) / double(w.numel());
    EXPECT_GT(frac, 0.003);
    EXPECT_LT(frac, 0.012);
}

TEST(Sparse, BadInputsAreShapeErrors) {
    EXPECT_THROW(csr_from_mask(randn({3, 4}, 1), at::zeros({4, 3}, at::kBool)), ShapeError);
    EXPECT_THROW(csr_from_mask(randn({3, 4}, 1), at::zeros({3, 4})), ShapeError);
}

}  // namespace
}  // namespace rq::quant
