#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>

// QTIP's incoherence processing (PAPER.md §9.1): per dimension n, a random sign vector S and an
// orthogonal U, applied to the rows of a matrix as x -> x diag(S) U. For n = 2^p, U is the
// normalised Walsh-Hadamard matrix, applied by the fast transform (O(n log n)); for n = m 2^p
// with m odd > 1 (688 = 43 x 16, stories260k's padded 176 = 11 x 16, 5632 = 11 x 512), U =
// Q^T (x) H_{2^p}, Q a seeded random orthogonal m x m matrix: QuIP#'s Kronecker alternative for
// sizes without a tabulated Hadamard matrix, still orthogonal and mixing every coordinate.
// Signs and factors come from plain integer and IEEE arithmetic (no LAPACK, no libm), so a seed
// gives the same bits on every machine: a checkpoint can be dequantized anywhere from its seeds.
// The weights and Hessian of QTIP: Wr = U_m^T diag(S_m) W diag(S_n) U_n, Hr = U_n^T diag(S_n)
// H diag(S_n) U_n; transform_both and untransform_both do the two sides.

namespace rq::quant {

// In place along the last dimension (a power of two): x H / sqrt(n), H the Sylvester Hadamard.
void fwht_(at::Tensor& x);
// The normalised Sylvester Hadamard matrix, float64 [n, n] (the plain twin of fwht_).
at::Tensor hadamard_matrix(int64_t n);

// float64 [n] of +-1, from `seed`.
at::Tensor random_signs(int64_t n, uint64_t seed);
// The orthogonal factor Q (float64 [m, m]) of odd part m from `seed`: modified Gram-Schmidt of
// a seeded matrix of near-Gaussian entries (sums of 12 uniforms). Cached per (m, seed).
const at::Tensor& kron_factor(int64_t m, uint64_t seed);

class Incoherence {
  public:
    Incoherence(int64_t n, uint64_t seed);  // signs and factor both from `seed`
    // The given signs (float64 [n], +-1); the factor kron_factor(m, factor_seed) when m > 1.
    Incoherence(const at::Tensor& signs, uint64_t factor_seed);

    int64_t           n() const { return n_; }
    int64_t           odd() const { return m_; }        // m: 1 for a power of two
    const at::Tensor& signs() const { return signs_; }  // float64 [n], +-1

    at::Tensor apply(const at::Tensor& x) const;  // x [.., n] -> x diag(S) U
    at::Tensor undo(const at::Tensor& y) const;   // y [.., n] -> y U^T diag(S)
    at::Tensor matrix_ref() const;  // diag(S) U, float64 [n, n], built explicitly (Kronecker)

  private:
    int64_t    n_, m_, p2_;
    at::Tensor signs_;  // float64 [n]
    at::Tensor q_;      // float64 [m, m] (m > 1)
};

// U_rows^T diag(S_rows) W diag(S_cols) U_cols for W [rows, cols], and back.
at::Tensor transform_both(const Incoherence& rows, const Incoherence& cols, const at::Tensor& w);
at::Tensor untransform_both(const Incoherence& rows, const Incoherence& cols, const at::Tensor& wr);

}  // namespace rq::quant
