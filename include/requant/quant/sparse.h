#pragma once
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

// The sparse parts of Dense-and-Sparse weights: CSR with fp16 values and int32 column indices
// (48 bits per non-zero, as the paper counts; row pointers are 32 bits per row on top), and the
// selection rules that pick which weights go there. O out, I in, nnz non-zeros.

namespace rq::quant {

struct SparseCsr {
    int64_t    rows = 0, cols = 0;
    at::Tensor indptr;   // int32 [O + 1]
    at::Tensor indices;  // int32 [nnz], ascending within a row
    at::Tensor values;   // fp16 [nnz]
    int64_t    nnz() const { return indices.defined() ? indices.numel() : 0; }
};

// The entries of `values` [O, I] where `mask` [O, I] (bool) is set.
SparseCsr      csr_from_mask(const at::Tensor& values, const at::Tensor& mask);
at::Tensor     csr_to_dense(const SparseCsr& s);      // float [O, I], zeros elsewhere
at::Tensor     csr_mask(const SparseCsr& s);          // bool [O, I]: where the entries are
int64_t        csr_storage_bits(const SparseCsr& s);  // 48 * nnz + 32 * (O + 1)
inline int64_t csr_paper_bits(const SparseCsr& s) {
    return 48 * s.nnz();
}

// SqueezeLLM's range rule (its outliers.py and generate_outlier_config.py): with the quartiles
// of w taken as the reference does, q1 = v[n / 4] and q3 = v[3n / 4] of the n sorted values
// (no interpolation), T = max(|q1 - rho (q3 - q1)|, |q3 + rho (q3 - q1)|); the outliers are
// {|w| >= T} outside `exclude` (bool [O, I] or undefined: the sensitive weights the reference
// removes first; the quartiles stay those of all of w). No size limit.
class IqrRule {
  public:
    explicit IqrRule(const at::Tensor& w, const at::Tensor& exclude = at::Tensor());  // sorts once
    double     threshold(double rho) const;                                           // T
    int64_t    count(double rho) const;  // |{|w| >= T} - exclude|, by binary search
    at::Tensor mask(double rho) const;   // bool [O, I]

  private:
    at::Tensor w_, exclude_, abs_sorted_;
    double     q1_ = 0, q3_ = 0;
};
at::Tensor iqr_outlier_mask(const at::Tensor& w, double rho);
int64_t    iqr_outlier_count(const at::Tensor& w, double rho);
// The k largest entries of `score` (ties to the lower flat index), as bool [O, I].
at::Tensor topk_mask(const at::Tensor& score, int64_t k);

}  // namespace rq::quant
