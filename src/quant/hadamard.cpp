// Incoherence transforms: fast Walsh-Hadamard and the Kronecker alternative
// (requant/quant/hadamard.h).
#include "requant/quant/hadamard.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "requant/error.h"

namespace rq::quant {
namespace {

bool power_of_two(int64_t n) {
    return n > 0 && (n & (n - 1)) == 0;
}

struct SplitMix64 {  // a small counter-based generator: the same stream everywhere
    uint64_t state;
    uint64_t next() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z          = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z          = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1), exact
};

// Q, float64 [m, m]: columns of a seeded matrix of near-Gaussian entries (the sum of 12
// uniforms less 6), orthonormalised by modified Gram-Schmidt (twice, for orthogonality to
// rounding), in plain loops: + - * / and sqrt only, so the bits do not depend on a BLAS.
at::Tensor gram_schmidt(int64_t m, uint64_t seed) {
    SplitMix64          rng{seed ^ 0x51A7E5EEDull};
    std::vector<double> a(std::size_t(m * m));  // column j at a[j m ..]
    for (double& x : a) {
        double s = -6.0;
        for (int k = 0; k < 12; ++k) s += rng.uniform();
        x = s;
    }
    auto col = [&](int64_t j) { return a.data() + j * m; };
    for (int64_t j = 0; j < m; ++j)
        for (int pass = 0; pass < 2; ++pass) {
            for (int64_t k = 0; k < j; ++k) {
                double d = 0;
                for (int64_t i = 0; i < m; ++i) d += col(k)[i] * col(j)[i];
                for (int64_t i = 0; i < m; ++i) col(j)[i] -= d * col(k)[i];
            }
            double nn = 0;
            for (int64_t i = 0; i < m; ++i) nn += col(j)[i] * col(j)[i];
            const double inv = 1.0 / std::sqrt(nn);
            for (int64_t i = 0; i < m; ++i) col(j)[i] *= inv;
        }
    at::Tensor q   = at::empty({m, m}, at::kDouble);
    auto       acc = q.accessor<double, 2>();
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < m; ++j) acc[i][j] = col(j)[i];
    return q;
}

}  // namespace

void fwht_(at::Tensor& x) {
    const int64_t n = x.size(-1);
    if (!power_of_two(n))
        throw ShapeError("fwht: the last dimension " + std::to_string(n) + " is not a power of 2");
    std::vector<int64_t> lead(x.sizes().begin(), x.sizes().end() - 1);
    at::Tensor           y = x.contiguous();
    for (int64_t h = 1; h < n; h *= 2) {  // butterflies of span h: (a, b) -> (a + b, a - b)
        std::vector<int64_t> shape = lead;
        shape.insert(shape.end(), {n / (2 * h), 2, h});
        const at::Tensor v = y.view(shape);
        const at::Tensor a = v.select(-2, 0), b = v.select(-2, 1);
        y = at::stack({a + b, a - b}, -2).view(x.sizes());
    }
    x = y.mul_(1.0 / std::sqrt(double(n)));
}

at::Tensor hadamard_matrix(int64_t n) {
    if (!power_of_two(n))
        throw ShapeError("hadamard: " + std::to_string(n) + " is not a power of 2");
    at::Tensor h = at::ones({1, 1}, at::kDouble);
    while (h.size(0) < n) h = at::cat({at::cat({h, h}, 1), at::cat({h, -h}, 1)}, 0);
    return h / std::sqrt(double(n));
}

at::Tensor random_signs(int64_t n, uint64_t seed) {
    if (n <= 0) throw ShapeError("incoherence: dimension " + std::to_string(n));
    SplitMix64 rng{seed};
    at::Tensor s = at::empty({n}, at::kDouble);
    double*    p = s.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) p[i] = (rng.next() >> 63) ? -1.0 : 1.0;
    return s;
}

const at::Tensor& kron_factor(int64_t m, uint64_t seed) {
    static std::mutex                                         mu;
    static std::map<std::pair<int64_t, uint64_t>, at::Tensor> cache;
    std::lock_guard<std::mutex>                               lock(mu);
    at::Tensor&                                               q = cache[{m, seed}];
    if (!q.defined()) q = gram_schmidt(m, seed);
    return q;
}

Incoherence::Incoherence(int64_t n, uint64_t seed) : Incoherence(random_signs(n, seed), seed) {}

Incoherence::Incoherence(const at::Tensor& signs, uint64_t factor_seed)
    : n_(signs.numel()), m_(signs.numel()), p2_(1), signs_(signs.to(at::kDouble).contiguous()) {
    if (n_ <= 0) throw ShapeError("incoherence: dimension " + std::to_string(n_));
    while (m_ % 2 == 0) m_ /= 2, p2_ *= 2;
    if (m_ > 1) q_ = kron_factor(m_, factor_seed);
}

at::Tensor Incoherence::apply(const at::Tensor& x) const {
    if (x.size(-1) != n_)
        throw ShapeError("incoherence: last dimension " + std::to_string(x.size(-1)) +
                         ", transform of " + std::to_string(n_));
    at::Tensor           y = x * signs_.to(x.scalar_type());
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
    shape.insert(shape.end(), {m_, p2_});
    y = y.reshape(shape);  // [.., m, 2^p]: X; the result is Q X H (row-major), = x (Q^T (x) H)
    fwht_(y);
    if (m_ > 1) y = at::matmul(q_.to(y.scalar_type()), y);
    return y.reshape(x.sizes());
}

at::Tensor Incoherence::undo(const at::Tensor& y) const {
    if (y.size(-1) != n_)
        throw ShapeError("incoherence: last dimension " + std::to_string(y.size(-1)) +
                         ", transform of " + std::to_string(n_));
    std::vector<int64_t> shape(y.sizes().begin(), y.sizes().end() - 1);
    shape.insert(shape.end(), {m_, p2_});
    at::Tensor x = y.reshape(shape);
    if (m_ > 1) x = at::matmul(q_.t().to(x.scalar_type()), x);  // Q^T Y H: H is its own inverse
    fwht_(x);
    return x.reshape(y.sizes()) * signs_.to(y.scalar_type());
}

at::Tensor Incoherence::matrix_ref() const {
    const at::Tensor h = hadamard_matrix(p2_);
    const at::Tensor u = m_ > 1 ? at::kron(q_.t().contiguous(), h) : h;
    return signs_.unsqueeze(1) * u;
}

at::Tensor transform_both(const Incoherence& rows, const Incoherence& cols, const at::Tensor& w) {
    // W diag(S_c) U_c on the rows, then U_r^T diag(S_r) (.) as the same op on the transpose.
    return rows.apply(cols.apply(w).t().contiguous()).t().contiguous();
}

at::Tensor untransform_both(const Incoherence& rows, const Incoherence& cols,
                            const at::Tensor& wr) {
    return cols.undo(rows.undo(wr.t().contiguous()).t().contiguous());
}

}  // namespace rq::quant
