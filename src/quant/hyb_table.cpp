// HYB's code table: deterministic 2-D k-means (requant/quant/trellis.h, PAPER.md §9.5).
// Compiled with -ffp-contract=off (CMakeLists.txt): the same table on every machine.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "requant/quant/trellis.h"

namespace rq::quant {
namespace {

// Lloyd's k-means of 2-D points into n_c centres; `nearest(p, c, arg)` assigns each point to
// its nearest centre (the first on ties). Sums in point order: the same bits for any
// `nearest` that picks the same centres.
template <class Nearest>
at::Tensor hyb_kmeans(uint64_t seed, int64_t n_points, int iters, Nearest&& nearest) {
    const int64_t        n_c = int64_t{1} << kHybLutBits;
    auto                 gen = at::detail::createCPUGenerator(seed);
    const at::Tensor     pts = at::randn({n_points, 2}, gen, at::kDouble).contiguous();
    at::Tensor           cen = at::randn({n_c, 2}, gen, at::kDouble).contiguous();
    const double*        p   = pts.data_ptr<double>();
    std::vector<int64_t> assign(std::size_t(n_points), 0);
    for (int it = 0; it < iters; ++it) {
        const double* c = cen.data_ptr<double>();
        at::parallel_for(0, n_points, 4096, [&](int64_t b, int64_t e) {  // points apart: any split
            nearest(p + 2 * b, e - b, c, n_c, assign.data() + b);
        });
        std::vector<double> sum(std::size_t(2 * n_c), 0.0), cnt(std::size_t(n_c), 0.0);
        for (int64_t i = 0; i < n_points; ++i) {
            const auto k = std::size_t(assign[std::size_t(i)]);
            sum[2 * k] += p[2 * i], sum[2 * k + 1] += p[2 * i + 1], cnt[k] += 1;
        }
        double* cw = cen.data_ptr<double>();
        for (std::size_t k = 0; k < std::size_t(n_c); ++k)
            if (cnt[k] > 0)
                cw[2 * k] = sum[2 * k] / cnt[k], cw[2 * k + 1] = sum[2 * k + 1] / cnt[k];
    }
    const double sd = cen.std(/*unbiased=*/false).item<double>();
    return (cen * (0.9682458365518543 / sd)).to(at::kFloat);
}

inline double dist2(const double* p, const double* c) {
    const double d0 = p[0] - c[0], d1 = p[1] - c[1];
    return d0 * d0 + d1 * d1;
}

// Every centre for every point.
void nearest_all(const double* p, int64_t n, const double* c, int64_t n_c, int64_t* arg) {
    for (int64_t i = 0; i < n; ++i) {
        double  best = std::numeric_limits<double>::infinity();
        int64_t a    = 0;
        for (int64_t k = 0; k < n_c; ++k) {
            const double d = dist2(p + 2 * i, c + 2 * k);
            if (d < best) best = d, a = k;
        }
        arg[i] = a;
    }
}

// Centres sorted by their first coordinate; from the point's place outwards on both sides,
// stopping a side once its first-coordinate gap alone exceeds the best distance. Ties go to the
// smaller index, as in nearest_all.
void nearest_sorted(const double* p, int64_t n, const double* c, int64_t n_c, int64_t* arg) {
    std::vector<int64_t> order(static_cast<std::size_t>(n_c), 0);
    for (int64_t k = 0; k < n_c; ++k) order[std::size_t(k)] = k;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return c[2 * a] < c[2 * b] || (c[2 * a] == c[2 * b] && a < b);
    });
    std::vector<double> xs(static_cast<std::size_t>(n_c));
    for (int64_t k = 0; k < n_c; ++k) xs[std::size_t(k)] = c[2 * order[std::size_t(k)]];
    for (int64_t i = 0; i < n; ++i) {
        const double* pi    = p + 2 * i;
        const auto    mid   = std::lower_bound(xs.begin(), xs.end(), pi[0]) - xs.begin();
        double        best  = std::numeric_limits<double>::infinity();
        int64_t       a     = n_c;
        auto          try_k = [&](int64_t r) {
            const int64_t k = order[std::size_t(r)];
            const double  d = dist2(pi, c + 2 * k);
            if (d < best || (d == best && k < a)) best = d, a = k;
        };
        for (int64_t lo = mid - 1, hi = mid; lo >= 0 || hi < n_c;) {
            bool more = false;
            if (hi < n_c) {
                const double gap = xs[std::size_t(hi)] - pi[0];
                if (gap * gap <= best)
                    try_k(hi++), more = true;
                else
                    hi = n_c;
            }
            if (lo >= 0) {
                const double gap = pi[0] - xs[std::size_t(lo)];
                if (gap * gap <= best)
                    try_k(lo--), more = true;
                else
                    lo = -1;
            }
            if (!more) break;
        }
        arg[i] = a;
    }
}

}  // namespace

at::Tensor hyb_table(uint64_t seed, int64_t n_points, int iters) {
    return hyb_kmeans(seed, n_points, iters, nearest_sorted);
}

at::Tensor hyb_table_ref(uint64_t seed, int64_t n_points, int iters) {
    return hyb_kmeans(seed, n_points, iters, nearest_all);
}

}  // namespace rq::quant
