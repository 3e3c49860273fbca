// Alg. 1's budget solver against brute force: optimal on convex error tables (where the
// Lagrangian search is exact), feasible and with no single upgrade left that fits and helps on
// arbitrary ones, the budget boundaries, and bad tables refused.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <functional>

#include "requant/decompose/budget.h"
#include "requant/error.h"

namespace rq::decompose {
namespace {

struct Brute {
    double  error = 1e300;
    int64_t count = 0;
};

Brute brute_force(const at::Tensor& e, const at::Tensor& n, int64_t budget) {
    const int64_t                                 K = e.size(0), R = e.size(1);
    Brute                                         best;
    std::vector<int64_t>                          c(std::size_t(K), 0);
    std::function<void(int64_t, double, int64_t)> go = [&](int64_t k, double err, int64_t cnt) {
        if (cnt > budget) return;
        if (k == K) {
            if (err < best.error) best = {err, cnt};
            return;
        }
        for (int64_t r = 0; r < R; ++r)
            go(k + 1, err + e[k][r].item<double>(), cnt + n[k][r].item<int64_t>());
    };
    go(0, 0, 0);
    return best;
}

// Candidate counts 0, s, 2s, ... per linear; convex decreasing errors when `convex`, with one
// step s for every linear (then every upgrade costs the same and the search is exact).
void tables(uint64_t seed, bool convex, at::Tensor& e, at::Tensor& n) {
    const int64_t    K = 5, R = 4;
    at::Generator    g = at::detail::createCPUGenerator(seed);
    const at::Tensor step =
        convex ? at::full({K, 1}, 3, at::kLong) : at::randint(1, 20, {K, 1}, g, at::kLong);
    n = step * at::arange(R, at::kLong).view({1, R});
    if (convex) {  // e(r) = a * exp(-b r): decreasing, convex in the count
        const at::Tensor a = at::rand({K, 1}, g, at::kDouble) * 10 + 1;
        const at::Tensor b = at::rand({K, 1}, g, at::kDouble) + 0.1;
        e                  = a * at::exp(-b * at::arange(R, at::kDouble).view({1, R}));
    } else {
        e = at::rand({K, R}, g, at::kDouble) * 10;
    }
}

TEST(Budget, OptimalOnConvexTables) {
    for (uint64_t seed = 1; seed <= 30; ++seed) {
        at::Tensor e, n;
        tables(seed, true, e, n);
        for (int64_t budget : {int64_t(0), int64_t(7), int64_t(25), int64_t(60), int64_t(1000)}) {
            const BudgetSolution s = solve_budget(e, n, budget);
            const Brute          b = brute_force(e, n, budget);
            EXPECT_LE(s.count, budget);
            EXPECT_NEAR(s.error, b.error, 1e-9 * (1 + b.error))
                << "seed " << seed << " budget " << budget;
        }
    }
}

TEST(Budget, FeasibleAndLocallyOptimalOnAnyTable) {
    for (uint64_t seed = 1; seed <= 30; ++seed) {
        at::Tensor e, n;
        tables(seed, false, e, n);
        const int64_t        budget = 30;
        const BudgetSolution s      = solve_budget(e, n, budget);
        ASSERT_LE(s.count, budget);
        double  err = 0;
        int64_t cnt = 0;
        for (int64_t k = 0; k < e.size(0); ++k) {
            err += e[k][s.choice[std::size_t(k)]].item<double>();
            cnt += n[k][s.choice[std::size_t(k)]].item<int64_t>();
        }
        EXPECT_NEAR(err, s.error, 1e-12 * (1 + err));
        EXPECT_EQ(cnt, s.count);
        EXPECT_LE(s.error, e.select(1, 0).sum().item<double>() + 1e-12) << "never worse than none";
        EXPECT_GE(s.error, brute_force(e, n, budget).error - 1e-12);
        // No single upgrade that fits the budget would lower the error.
        for (int64_t k = 0; k < e.size(0); ++k)
            for (int64_t r = s.choice[std::size_t(k)] + 1; r < e.size(1); ++r) {
                const int64_t extra =
                    n[k][r].item<int64_t>() - n[k][s.choice[std::size_t(k)]].item<int64_t>();
                if (s.count + extra <= budget) {
                    EXPECT_GE(e[k][r].item<double>(), e[k][s.choice[std::size_t(k)]].item<double>())
                        << "seed " << seed << ": upgrade of linear " << k << " fits and helps";
                }
            }
    }
}

TEST(Budget, Boundaries) {
    at::Tensor e, n;
    tables(3, true, e, n);
    const BudgetSolution none = solve_budget(e, n, 0);
    EXPECT_EQ(none.count, 0);
    for (int64_t c : none.choice) EXPECT_EQ(c, 0);
    const BudgetSolution all = solve_budget(e, n, n.select(1, -1).sum().item<int64_t>());
    for (int64_t c : all.choice) EXPECT_EQ(c, e.size(1) - 1) << "decreasing errors, budget for all";
}

TEST(Budget, BadTablesRefused) {
    const at::Tensor e = at::ones({2, 3}, at::kDouble);
    EXPECT_THROW(solve_budget(e, at::tensor({1, 2, 3, 0, 1, 2}, at::kLong).view({2, 3}), 5),
                 ConfigError);  // first candidate must be empty
    EXPECT_THROW(solve_budget(e, at::tensor({0, 2, 1, 0, 1, 2}, at::kLong).view({2, 3}), 5),
                 ConfigError);  // decreasing counts
    EXPECT_THROW(solve_budget(e, at::zeros({2, 2}, at::kLong), 5), ConfigError);
    EXPECT_THROW(solve_budget(e * std::nan(""), at::zeros({2, 3}, at::kLong), 5), ConfigError);
}

}  // namespace
}  // namespace rq::decompose
