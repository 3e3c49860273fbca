// Incoherence transforms: fast Walsh-Hadamard and the Kronecker alternative
// (requant/quant/hadamard.h).
#include "requant/quant/hadamard.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <string>

#include "requant/error.h"

namespace rq::quant {
namespace {

bool power_of_two(int64_t n) {
    return n > 0 && (n & (n - 1)) == 0;
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

Incoherence::Incoherence(int64_t n, uint64_t seed) : n_(n), m_(n), p2_(1) {
    if (n <= 0) throw ShapeError("incoherence: dimension " + std::to_string(n));
    while (m_ % 2 == 0) m_ /= 2, p2_ *= 2;
    auto gen = at::detail::createCPUGenerator(seed);
    signs_   = at::randint(0, 2, {n}, gen, at::kDouble).mul_(2).sub_(1);
    if (m_ > 1) {  // QR of a Gaussian, R's diagonal made positive: Haar-distributed Q
        const at::Tensor g = at::randn({m_, m_}, gen, at::kDouble);
        auto [q, r]        = at::linalg_qr(g);
        q_                 = q * r.diagonal().sign().unsqueeze(0);
    }
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
    const at::Tensor u = m_ > 1 ? at::kron(q_.t(), h) : h;
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
