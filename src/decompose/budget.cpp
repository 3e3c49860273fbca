// Alg. 1's global outlier budget (requant/decompose/budget.h).
#include "requant/decompose/budget.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "requant/error.h"

namespace rq::decompose {
namespace {

struct Tables {
    int64_t                           K = 0, R = 0;
    std::vector<std::vector<double>>  e;
    std::vector<std::vector<int64_t>> n;
};

// Each linear's choice at price mu, and the totals.
BudgetSolution at_price(const Tables& t, double mu) {
    BudgetSolution s;
    s.price = mu;
    s.choice.assign(std::size_t(t.K), 0);
    for (int64_t k = 0; k < t.K; ++k) {
        const auto& e      = t.e[std::size_t(k)];
        const auto& n      = t.n[std::size_t(k)];
        int64_t     best   = 0;
        double      best_v = e[0];  // n[0] = 0
        for (int64_t r = 1; r < t.R; ++r) {
            const double v = e[std::size_t(r)] + mu * double(n[std::size_t(r)]);
            if (v < best_v) best = r, best_v = v;
        }
        s.choice[std::size_t(k)] = best;
        s.error += e[std::size_t(best)];
        s.count += n[std::size_t(best)];
    }
    return s;
}

}  // namespace

BudgetSolution solve_budget(const at::Tensor& error, const at::Tensor& count, int64_t budget) {
    if (error.dim() != 2 || count.sizes() != error.sizes() || error.size(1) < 1)
        throw ConfigError("solve_budget: error and count must both be [linears, candidates]");
    if (budget < 0) throw ConfigError("solve_budget: negative budget");
    Tables t;
    t.K                   = error.size(0);
    t.R                   = error.size(1);
    const at::Tensor e64  = error.to(at::kDouble).contiguous();
    const at::Tensor n64  = count.to(at::kLong).contiguous();
    auto             ea   = e64.accessor<double, 2>();
    auto             na   = n64.accessor<int64_t, 2>();
    double           emax = 0;
    for (int64_t k = 0; k < t.K; ++k) {
        t.e.emplace_back();
        t.n.emplace_back();
        for (int64_t r = 0; r < t.R; ++r) {
            if (!std::isfinite(ea[k][r])) throw ConfigError("solve_budget: non-finite error");
            if (r == 0 && na[k][r] != 0)
                throw ConfigError("solve_budget: the first candidate must have no outliers");
            if (r > 0 && na[k][r] < na[k][r - 1])
                throw ConfigError("solve_budget: counts must not decrease along the candidates");
            t.e.back().push_back(ea[k][r]);
            t.n.back().push_back(na[k][r]);
            emax = std::max(emax, std::abs(ea[k][r]));
        }
    }
    // At mu_hi every extra outlier costs more than any error it could save: all choose 0.
    double         lo = 0, hi = 2 * emax + 1;
    BudgetSolution best = at_price(t, lo);
    if (best.count > budget) {
        for (int it = 0; it < 200 && hi - lo > 1e-300; ++it) {
            const double mid = 0.5 * (lo + hi);
            if (mid == lo || mid == hi) break;
            (at_price(t, mid).count > budget ? lo : hi) = mid;
        }
        best = at_price(t, hi);
    }
    // Spend what is left: repeatedly take the upgrade with the largest error drop per extra
    // outlier that fits (ties to the lower linear, then the lower candidate).
    for (;;) {
        int64_t bk = -1, br = -1;
        double  bgain = 0;
        for (int64_t k = 0; k < t.K; ++k) {
            const int64_t c = best.choice[std::size_t(k)];
            for (int64_t r = c + 1; r < t.R; ++r) {
                const int64_t extra =
                    t.n[std::size_t(k)][std::size_t(r)] - t.n[std::size_t(k)][std::size_t(c)];
                const double drop =
                    t.e[std::size_t(k)][std::size_t(c)] - t.e[std::size_t(k)][std::size_t(r)];
                if (extra <= 0 || drop <= 0 || best.count + extra > budget) continue;
                const double gain = drop / double(extra);
                if (gain > bgain) bk = k, br = r, bgain = gain;
            }
        }
        if (bk < 0) break;
        const int64_t c = best.choice[std::size_t(bk)];
        best.count += t.n[std::size_t(bk)][std::size_t(br)] - t.n[std::size_t(bk)][std::size_t(c)];
        best.error += t.e[std::size_t(bk)][std::size_t(br)] - t.e[std::size_t(bk)][std::size_t(c)];
        best.choice[std::size_t(bk)] = br;
    }
    return best;
}

}  // namespace rq::decompose
