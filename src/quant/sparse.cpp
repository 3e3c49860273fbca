// CSR sparse parts and their selection rules (requant/quant/sparse.h).
#include "requant/quant/sparse.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "requant/error.h"

namespace rq::quant {

SparseCsr csr_from_mask(const at::Tensor& values, const at::Tensor& mask) {
    if (values.dim() != 2 || values.sizes() != mask.sizes() || mask.scalar_type() != at::kBool)
        throw ShapeError("csr_from_mask: values [O, I] and a bool mask of the same shape needed");
    SparseCsr s;
    s.rows                   = values.size(0);
    s.cols                   = values.size(1);
    const at::Tensor m       = mask.contiguous();
    const at::Tensor nz      = m.nonzero();  // [nnz, 2], row-major order
    s.indices                = nz.select(1, 1).to(at::kInt).contiguous();
    s.values                 = values.contiguous().masked_select(m).to(at::kHalf);
    const at::Tensor per_row = m.sum(1, /*keepdim=*/false, at::kInt);
    s.indptr = at::cat({at::zeros({1}, at::kInt), per_row.cumsum(0, at::kInt)}).contiguous();
    return s;
}

namespace {
at::Tensor row_of_each(const SparseCsr& s) {  // int64 [nnz]
    const at::Tensor counts = s.indptr.narrow(0, 1, s.rows) - s.indptr.narrow(0, 0, s.rows);
    return at::repeat_interleave(at::arange(s.rows, at::kLong), counts.to(at::kLong));
}
}  // namespace

at::Tensor csr_to_dense(const SparseCsr& s) {
    at::Tensor out = at::zeros({s.rows, s.cols}, at::kFloat);
    if (s.nnz() == 0) return out;
    out.index_put_({row_of_each(s), s.indices.to(at::kLong)}, s.values.to(at::kFloat));
    return out;
}

at::Tensor csr_mask(const SparseCsr& s) {
    at::Tensor out = at::zeros({s.rows, s.cols}, at::kBool);
    if (s.nnz() == 0) return out;
    out.index_put_({row_of_each(s), s.indices.to(at::kLong)}, at::scalar_tensor(true, at::kBool));
    return out;
}

int64_t csr_storage_bits(const SparseCsr& s) {
    return s.indptr.defined() ? 48 * s.nnz() + 32 * (s.rows + 1) : 0;  // no part, no row pointers
}

IqrRule::IqrRule(const at::Tensor& w, const at::Tensor& exclude)
    : w_(w.detach().to(at::kFloat).contiguous()), exclude_(exclude) {
    const at::Tensor v = std::get<0>(w_.flatten().sort());
    const int64_t    n = v.numel();
    q1_                = v[n / 4].item<double>();
    q3_                = v[3 * n / 4].item<double>();
    const at::Tensor a = w_.flatten().abs();
    abs_sorted_ =
        std::get<0>((exclude_.defined() ? a.masked_select(~exclude_.flatten()) : a).sort());
}

double IqrRule::threshold(double rho) const {
    const double iqr = q3_ - q1_;
    return std::max(std::abs(q1_ - rho * iqr), std::abs(q3_ + rho * iqr));
}

int64_t IqrRule::count(double rho) const {
    const float   t = float(threshold(rho));
    const float*  p = abs_sorted_.data_ptr<float>();
    const int64_t n = abs_sorted_.numel();
    return n - (std::lower_bound(p, p + n, t) - p);
}

at::Tensor IqrRule::mask(double rho) const {
    const at::Tensor m = w_.abs() >= float(threshold(rho));
    return exclude_.defined() ? m & ~exclude_ : m;
}

at::Tensor iqr_outlier_mask(const at::Tensor& w, double rho) {
    return IqrRule(w).mask(rho);
}
int64_t iqr_outlier_count(const at::Tensor& w, double rho) {
    return IqrRule(w).count(rho);
}

at::Tensor topk_mask(const at::Tensor& score, int64_t k) {
    at::Tensor mask = at::zeros(score.sizes(), at::kBool);
    if (k <= 0) return mask;
    const at::Tensor f = score.detach().flatten().to(at::kDouble);
    k                  = std::min<int64_t>(k, f.numel());
    // Stable descending sort: equal scores keep index order, so ties go to the lower index.
    const at::Tensor order = std::get<1>(f.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
    mask.view({-1}).index_fill_(0, order.narrow(0, 0, k), true);
    return mask;
}

}  // namespace rq::quant
