// SqueezeLLM per-row Fisher-weighted k-means LUT quantizer (requant/quant/squeezellm.h).
// Plain loops over one sorted copy of each row: in 1-D, with sorted values and sorted levels,
// the nearest-level assignment is one merge-like sweep, so an iteration is O(I) after one sort.
// Not here: picking the sparse part, or the Fisher diagonal itself.
#include "requant/quant/squeezellm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>

#include "requant/error.h"
#include "requant/quant/rtn.h"

namespace rq::quant {
namespace {

// The fp16 value nearest m. Going through float first can round twice (m -> float lands on an
// fp16 tie); checking the neighbour on m's side of the result undoes that. Beyond the fp16
// range this gives +-65504, not inf.
float nearest_half(double m) {
    const at::Half h(static_cast<float>(m));
    const double   d = double(float(h));
    if (d == m) return float(h);
    const bool  up = d < m, neg = (h.x & 0x8000) != 0;  // the other candidate lies toward m
    uint16_t    x = (h.x & 0x7fff) == 0 ? uint16_t(up ? 0x0001 : 0x8001)
                                        : uint16_t(up != neg ? h.x + 1 : h.x - 1);
    const float o = float(at::Half(x, at::Half::from_bits()));
    return std::abs(double(o) - m) < std::abs(d - m) ? o : float(h);
}

// One row in ascending order of (value, column). I = row length, K = levels.
struct Row {
    std::vector<float>   v;    // [I] weights, ascending
    std::vector<double>  f;    // [I] their sample weights (Fisher, or 1 for an all-zero row)
    std::vector<int64_t> col;  // [I] original column of each sorted position
    std::vector<float>   c;    // [K] levels (fp16 values), ascending
    std::vector<int>     a;    // [I] level of each sorted position
};

void prepare(const float* w, const double* f, int64_t I, Row& r) {
    r.col.resize(I);
    std::iota(r.col.begin(), r.col.end(), int64_t(0));
    std::sort(r.col.begin(), r.col.end(),
              [w](int64_t x, int64_t y) { return w[x] < w[y] || (w[x] == w[y] && x < y); });
    const bool any = std::any_of(f, f + I, [](double x) { return x > 0; });
    r.v.resize(I);
    r.f.resize(I);
    for (int64_t i = 0; i < I; ++i) {
        r.v[i] = w[r.col[i]];
        r.f[i] = any ? f[r.col[i]] : 1.0;
    }
}

// Nearest level for every weight, ties toward the lower level (and the first of equal levels).
// Returns whether a positive-weight assignment changed: zero-weight positions never decide.
bool assign(Row& r) {
    const int  K    = int(r.c.size());
    const auto next = [&r, K](int j) {  // the next distinct level above level j
        int k = j + 1;
        while (k < K && r.c[k] == r.c[j]) ++k;
        return k;
    };
    int  j = 0, k = next(0);
    bool changed = false;
    for (size_t i = 0; i < r.v.size(); ++i) {
        const double x = r.v[i];
        // Distances along the sorted levels fall, then rise: walk while strictly closer.
        while (k < K && std::abs(x - r.c[k]) < std::abs(x - r.c[j])) {
            j = k;
            k = next(k);
        }
        if (r.a[i] != j) {
            changed = changed || r.f[i] > 0;
            r.a[i]  = j;
        }
    }
    return changed;
}

double objective(const Row& r) {
    double s = 0;
    for (size_t i = 0; i < r.v.size(); ++i) {
        const double d = double(r.v[i]) - r.c[r.a[i]];
        s += r.f[i] * d * d;
    }
    return s;
}

// The distinct fp16 values of the positive-weight weights, ascending, with the cumulative
// weight up to and including each.
struct Distinct {
    std::vector<float>  u;
    std::vector<double> cum;
};
Distinct distinct_half(const Row& r) {
    Distinct d;
    for (size_t i = 0; i < r.v.size(); ++i) {
        if (!(r.f[i] > 0)) continue;
        const float h = float(at::Half(r.v[i]));  // monotone, so u stays sorted
        if (d.u.empty() || h != d.u.back()) {
            d.u.push_back(h);
            d.cum.push_back(d.cum.empty() ? 0.0 : d.cum.back());
        }
        d.cum.back() += r.f[i];
    }
    return d;
}

// An exact row (the header): at most K distinct values, which become the levels in r.c.
bool exact_row(Row& r, int K, const Distinct& d) {
    const int64_t D = int64_t(d.u.size());
    if (D > K) return false;
    r.c.assign(K, 0.0f);
    for (int k = 0; k < K && D > 0; ++k) r.c[k] = d.u[std::min<int64_t>(k, D - 1)];
    return true;
}

// Multistart's starts (the header). grid: fp16 [K], the row's RTN levels.
std::vector<std::vector<float>> starts(const Distinct& d, int K, const float* grid) {
    const std::vector<float>&  u   = d.u;
    const std::vector<double>& cum = d.cum;
    const int64_t              D   = int64_t(u.size());
    std::vector<float>         quantile(K), mid(K);
    int64_t                    prev = -1, p = 0;
    for (int k = 0; k < K; ++k) {
        const double t = (k + 0.5) / K * cum.back();
        while (p < D - 1 && cum[p] < t) ++p;
        prev        = std::min(std::max(p, prev + 1), D - K + k);  // strictly increasing, fits
        quantile[k] = u[prev];
        mid[k]      = nearest_half(u[0] + (double(u[D - 1]) - u[0]) * (k + 0.5) / K);
    }
    return {quantile, mid, {grid, grid + K}};
}

// Moves the wasted levels (zero-weight cluster, or equal to a kept lower level) to the fp16
// values of the weights with the largest weighted error that are not levels yet.
void reseed(Row& r, const std::vector<double>& sw) {
    const int          K = int(r.c.size());
    std::vector<int>   wasted;
    std::vector<float> kept;  // ascending, distinct
    for (int k = 0; k < K; ++k) {
        if (sw[k] > 0 && (kept.empty() || r.c[k] != kept.back()))
            kept.push_back(r.c[k]);
        else
            wasted.push_back(k);
    }
    if (wasted.empty()) return;
    std::vector<double>  e(r.v.size());
    std::vector<int64_t> order;
    for (size_t i = 0; i < r.v.size(); ++i) {
        const double d = double(r.v[i]) - r.c[r.a[i]];
        e[i]           = r.f[i] * d * d;
        if (e[i] > 0) order.push_back(int64_t(i));
    }
    std::sort(order.begin(), order.end(),
              [&e](int64_t x, int64_t y) { return e[x] > e[y] || (e[x] == e[y] && x < y); });
    size_t n = 0;
    for (int64_t i : order) {
        if (n == wasted.size()) break;
        const float h  = float(at::Half(r.v[i]));
        auto        at = std::lower_bound(kept.begin(), kept.end(), h);
        if (at != kept.end() && *at == h) continue;
        kept.insert(at, h);
        r.c[wasted[n++]] = h;
    }
    std::sort(r.c.begin(), r.c.end());
}

// Each level to the fp16 value nearest its cluster's weighted mean; empty ones re-seeded.
void update(Row& r) {
    const int           K = int(r.c.size());
    std::vector<double> sw(K, 0.0), swx(K, 0.0);
    for (size_t i = 0; i < r.v.size();) {  // codes ascend along the sorted row: one run each
        const int k = r.a[i];
        double    s = 0, sx = 0;
        for (; i < r.v.size() && r.a[i] == k; ++i) s += r.f[i], sx += r.f[i] * r.v[i];
        sw[k]  = s;
        swx[k] = sx;
    }
    for (int k = 0; k < K; ++k)
        if (sw[k] > 0) r.c[k] = nearest_half(swx[k] / sw[k]);
    reseed(r, sw);
}

// Lloyd iterations from the levels in r.c; returns the objective trace.
std::vector<double> lloyd(Row& r, int iters) {
    r.a.assign(r.v.size(), -1);
    assign(r);
    std::vector<double> trace{objective(r)};
    for (int it = 0; it < iters; ++it) {
        update(r);
        const bool changed = assign(r);
        trace.push_back(objective(r));
        if (!changed) break;
    }
    return trace;
}

// SplitMix64: the draws of k-means++, uniform doubles in [0, 1).
struct Draws {
    uint64_t s;
    double   next() {
          uint64_t z = (s += 0x9E3779B97F4A7C15ull);
          z          = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
          z          = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
          return double((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
    }
};

// The first index whose cumulative sum reaches t (numpy.searchsorted, left), at most n - 1.
int64_t draw_index(const std::vector<double>& cum, double t) {
    const auto at = std::lower_bound(cum.begin(), cum.end(), t);
    return std::min<int64_t>(at - cum.begin(), int64_t(cum.size()) - 1);
}

// Greedy k-means++ weighted by r.f (the header): K levels, ascending.
std::vector<float> plus_plus(const Row& r, int K, uint64_t seed) {
    const size_t        n      = r.v.size();
    const int           trials = 2 + int(std::log(double(K)));
    Draws               g{seed};
    std::vector<double> cum(n), d2(n), cand(n), best_d2(n);
    std::partial_sum(r.f.begin(), r.f.end(), cum.begin());
    std::vector<float> c{r.v[size_t(draw_index(cum, g.next() * cum.back()))]};
    double             pot = 0;
    for (size_t i = 0; i < n; ++i) {
        d2[i] = (double(r.v[i]) - c[0]) * (double(r.v[i]) - c[0]);
        pot += r.f[i] * d2[i];
    }
    for (int k = 1; k < K; ++k) {
        for (size_t i = 0; i < n; ++i) cum[i] = (i ? cum[i - 1] : 0.0) + r.f[i] * d2[i];
        double  best_pot = 0;
        int64_t best     = -1;
        for (int t = 0; t < trials; ++t) {
            const int64_t id = draw_index(cum, g.next() * pot);
            double        s  = 0;
            for (size_t i = 0; i < n; ++i) {
                const double d = double(r.v[i]) - r.v[size_t(id)];
                cand[i]        = std::min(d2[i], d * d);
                s += r.f[i] * cand[i];
            }
            if (best < 0 || s < best_pot) best_pot = s, best = id, cand.swap(best_d2);  // no copy
        }
        c.push_back(r.v[size_t(best)]);
        d2.swap(best_d2);
        pot = best_pot;
    }
    std::sort(c.begin(), c.end());
    return c;
}

// New centres: each cluster's weighted mean (in double, stored as float); an empty cluster
// takes the value farthest from its centre that no earlier empty cluster took. Returns the
// total squared shift.
double move_centres(Row& r) {
    const int           K = int(r.c.size());
    std::vector<double> sw(K, 0.0), swx(K, 0.0);
    for (size_t i = 0; i < r.v.size(); ++i) sw[r.a[i]] += r.f[i], swx[r.a[i]] += r.f[i] * r.v[i];
    std::vector<float> c(r.c);
    std::vector<int>   empty;
    for (int k = 0; k < K; ++k)
        if (sw[k] > 0)
            c[k] = float(swx[k] / sw[k]);
        else
            empty.push_back(k);
    if (!empty.empty()) {
        std::vector<int64_t> order(r.v.size());
        std::iota(order.begin(), order.end(), int64_t(0));
        const auto dist = [&r](int64_t i) { return std::abs(double(r.v[i]) - r.c[r.a[i]]); };
        std::stable_sort(order.begin(), order.end(),
                         [&dist](int64_t x, int64_t y) { return dist(x) > dist(y); });
        for (size_t e = 0; e < empty.size() && e < order.size(); ++e) c[empty[e]] = r.v[order[e]];
    }
    double shift = 0;
    for (int k = 0; k < K; ++k) shift += (double(c[k]) - r.c[k]) * (double(c[k]) - r.c[k]);
    std::sort(c.begin(), c.end());
    r.c = std::move(c);
    return shift;
}

// sklearn's Lloyd from the centres in r.c (the header); returns the objective trace, the last
// entry after the final assignment.
std::vector<double> lloyd_pp(Row& r, const SqueezeParams& p) {
    double m = 0, m2 = 0;  // tol is relative to the row's (unweighted) variance
    for (float x : r.v) m += x, m2 += double(x) * x;
    m /= double(r.v.size());
    const double     tol = p.tol * std::max(0.0, m2 / double(r.v.size()) - m * m);
    std::vector<int> old;
    r.a.assign(r.v.size(), -1);
    std::vector<double> trace;
    for (int it = 0; it < p.iters; ++it) {
        assign(r);
        trace.push_back(objective(r));
        const double shift = move_centres(r);
        if (r.a == old || shift <= tol) break;  // no assignment changed, or centres settled
        old = r.a;
    }
    assign(r);  // the final assignment (sklearn's last E-step)
    trace.push_back(objective(r));
    return trace;
}

uint64_t row_seed(uint64_t seed, int64_t row) {
    return seed * 0xD1B54A32D192ED03ull ^ uint64_t(row);
}

// PlusPlus (the header): one start, Lloyd, then the centres rounded to fp16.
std::vector<double> kmeans_pp(Row& r, const SqueezeParams& p, int64_t row) {
    if (exact_row(r, 1 << p.bits, distinct_half(r))) return lloyd(r, 0);
    r.c                       = plus_plus(r, 1 << p.bits, row_seed(p.seed, row));
    std::vector<double> trace = lloyd_pp(r, p);
    for (float& c : r.c) c = float(at::Half(c));
    std::sort(r.c.begin(), r.c.end());
    assign(r);
    trace.push_back(objective(r));
    return trace;
}

// The whole per-row algorithm (see the header): Lloyd from each start, the lowest final
// objective kept (the earlier start on a tie). Leaves the levels in r.c and the codes in r.a;
// returns the kept start's trace.
std::vector<double> kmeans_row(Row& r, const SqueezeParams& p, const float* grid) {
    const Distinct d = distinct_half(r);
    if (exact_row(r, 1 << p.bits, d)) return lloyd(r, 0);
    std::vector<double> best;
    std::vector<float>  c;
    std::vector<int>    a;
    for (std::vector<float>& s : starts(d, 1 << p.bits, grid)) {
        r.c                       = std::move(s);
        std::vector<double> trace = lloyd(r, p.iters);
        if (best.empty() || trace.back() < best.back()) {
            best = std::move(trace);
            c    = r.c;
            a    = r.a;
        }
    }
    r.c = std::move(c);
    r.a = std::move(a);
    return best;
}

// fp16-valued float [O, K]: per row, the RTN levels (rtn.h) of the weights that count (zero-
// weight ones replaced by 0, which RTN's range always holds anyway).
at::Tensor rtn_grid(const at::Tensor& w, const at::Tensor& f, int bits) {
    const at::Tensor counts = (f > 0) | (f == 0).all(1, /*keepdim=*/true);
    at::Tensor       s, z;
    uniform_group_params(at::where(counts, w, at::zeros_like(w)), bits, s, z);
    const at::Tensor k = at::arange(int64_t(1) << bits, w.options());
    return (s * (k.unsqueeze(0) - z)).to(at::kHalf).to(at::kFloat).contiguous();
}

// Checks params, shapes and values; w as contiguous float, f as double [O, I]. PlusPlus, as
// the reference (nuq.py): a weight that is exactly 0 gets sample weight 0.
void check_inputs(const at::Tensor& w_in, const at::Tensor& f_in, const SqueezeParams& p,
                  at::Tensor& w, at::Tensor& f) {
    if (p.bits < 2 || p.bits > 8)
        throw ConfigError("squeezellm: bits must be in 2..8, got " + std::to_string(p.bits));
    if (p.iters < 0)
        throw ConfigError("squeezellm: iters must be >= 0, got " + std::to_string(p.iters));
    if (!w_in.is_floating_point()) throw ShapeError("squeezellm: weight must be floating point");
    if (f_in.scalar_type() != at::kFloat && f_in.scalar_type() != at::kDouble)
        throw ShapeError("squeezellm: fisher must be float or double");
    if (!f_in.sizes().equals(w_in.sizes()))
        throw ShapeError("squeezellm: fisher shape " + c10::str(f_in.sizes()) +
                         " differs from weight shape " + c10::str(w_in.sizes()));
    if (w_in.size(-1) == 0) throw ShapeError("squeezellm: weight has no input columns");
    w                    = w_in.to(at::kFloat).contiguous();
    f                    = f_in.to(at::kDouble).contiguous();
    const auto first_bad = [&](const at::Tensor& bad, const char* what, const at::Tensor& t) {
        if (!bad.any().item<bool>()) return;
        const int64_t k = bad.flatten().nonzero()[0][0].item<int64_t>(), I = t.size(1);
        throw ConfigError(std::string("squeezellm: ") + what + " at (row " + std::to_string(k / I) +
                          ", col " + std::to_string(k % I) +
                          "): " + std::to_string(t.flatten()[k].item<double>()));
    };
    first_bad(~at::isfinite(w), "non-finite weight", w);
    first_bad(~at::isfinite(f) | (f < 0), "negative or non-finite fisher", f);
    if (p.start == KmeansStart::PlusPlus) f = f.masked_fill(w == 0, 0.0).contiguous();
}

void check_matrix(const at::Tensor& w_in, const at::Tensor& f_in, const SqueezeParams& p,
                  at::Tensor& w, at::Tensor& f) {
    if (w_in.dim() != 2)
        throw ShapeError("squeezellm: weight must be [out, in], got " + c10::str(w_in.sizes()));
    check_inputs(w_in, f_in, p, w, f);
}

}  // namespace

QuantizedLinear squeezellm_quantize(const at::Tensor& w_in, const at::Tensor& f_in,
                                    const SqueezeParams& p) {
    at::Tensor w, f;
    check_matrix(w_in, f_in, p, w, f);
    const int64_t   O = w.size(0), I = w.size(1), K = int64_t(1) << p.bits;
    QuantizedLinear q;
    q.bits                 = p.bits;
    q.group_size           = 0;
    q.codes                = at::empty({O, I}, at::kByte);
    q.lut                  = at::empty({O, K}, at::kHalf);
    const bool       multi = p.start == KmeansStart::Multistart;
    const at::Tensor grid  = multi ? rtn_grid(w, f, p.bits) : at::Tensor();
    const float*     W     = w.data_ptr<float>();
    const double*    F     = f.data_ptr<double>();
    uint8_t*         C     = q.codes.data_ptr<uint8_t>();
    at::Half*        L     = q.lut.data_ptr<at::Half>();
    // Rows are independent and each is computed the same way on any thread: results do not
    // depend on the thread count.
    at::parallel_for(0, O, 1, [&](int64_t r0, int64_t r1) {
        Row r;
        for (int64_t row = r0; row < r1; ++row) {
            prepare(W + row * I, F + row * I, I, r);
            if (multi)
                kmeans_row(r, p, grid.data_ptr<float>() + row * K);
            else
                kmeans_pp(r, p, row);
            for (int64_t k = 0; k < K; ++k) L[row * K + k] = at::Half(r.c[k]);
            for (int64_t i = 0; i < I; ++i) C[row * I + r.col[i]] = uint8_t(r.a[i]);
        }
    });
    return q;
}

std::vector<double> squeezellm_objective_trace(const at::Tensor& w_row, const at::Tensor& f_row,
                                               const SqueezeParams& p, int64_t row) {
    if (w_row.dim() != 1)
        throw ShapeError("squeezellm: row must be [in], got " + c10::str(w_row.sizes()));
    at::Tensor w, f;
    check_inputs(w_row.unsqueeze(0), f_row.dim() == 1 ? f_row.unsqueeze(0) : f_row, p, w, f);
    Row r;
    prepare(w.data_ptr<float>(), f.data_ptr<double>(), w.size(1), r);
    if (p.start == KmeansStart::PlusPlus) return kmeans_pp(r, p, row);
    return kmeans_row(r, p, rtn_grid(w, f, p.bits).data_ptr<float>());
}

at::Tensor squeezellm_starts(const at::Tensor& w_in, const at::Tensor& f_in,
                             const SqueezeParams& p) {
    at::Tensor w, f;
    check_matrix(w_in, f_in, p, w, f);
    const int64_t O = w.size(0), I = w.size(1), K = int64_t(1) << p.bits;
    at::Tensor    out = at::full({O, K}, std::numeric_limits<float>::quiet_NaN(), at::kFloat);
    float*        S   = out.data_ptr<float>();
    at::parallel_for(0, O, 1, [&](int64_t r0, int64_t r1) {
        Row r;
        for (int64_t row = r0; row < r1; ++row) {
            prepare(w.data_ptr<float>() + row * I, f.data_ptr<double>() + row * I, I, r);
            if (exact_row(r, int(K), distinct_half(r))) continue;
            const std::vector<float> c = plus_plus(r, int(K), row_seed(p.seed, row));
            std::copy(c.begin(), c.end(), S + row * K);
        }
    });
    return out;
}

}  // namespace rq::quant
