#pragma once
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

// Alg. 1's allocation (PAPER.md §4.3): each linear l has a table of candidate outlier counts
// n_l(r) and the base method's error E_l(r) after removing that many outliers and re-quantizing;
// choose one candidate per linear minimising sum_l E_l(r_l) subject to sum_l n_l(r_l) <= budget.
// A multiple-choice knapsack, solved by a Lagrangian search: for a price mu each linear takes
// argmin_r E_l(r) + mu n_l(r) (ties to the smaller count); mu is bisected to the smallest price
// whose total fits, then the leftover budget is spent greedily on the upgrades with the best
// error drop per outlier that still fit. Deterministic; pure (no ranks: the coordinator calls
// it). K linears, R candidates.

namespace rq::decompose {

struct BudgetSolution {
    std::vector<int64_t> choice;     // [K] candidate index per linear
    double               error = 0;  // sum of the chosen errors
    int64_t              count = 0;  // sum of the chosen counts (<= budget)
    double               price = 0;  // the Lagrange multiplier mu found
};

// error: double [K, R]; count: int64 [K, R], non-decreasing along R with count[:, 0] = 0 (the
// "no outliers" candidate, so a feasible choice always exists). Throws ConfigError otherwise.
BudgetSolution solve_budget(const at::Tensor& error, const at::Tensor& count, int64_t budget);

}  // namespace rq::decompose
