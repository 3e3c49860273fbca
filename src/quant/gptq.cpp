// GPTQ (requant/quant/gptq.h). Computation in fp64 on CPU: the Cholesky factors of small
// Hessians are cheap, and fp64 keeps the result independent of BLAS blocking.
#include "requant/quant/gptq.h"

#include <ATen/ATen.h>

#include "requant/error.h"
#include "requant/quant/rtn.h"

namespace rq::quant {

double output_error(const at::Tensor& w, const at::Tensor& w_hat, const at::Tensor& hessian) {
    const at::Tensor d = (w_hat.to(at::kDouble) - w.to(at::kDouble));
    return (d.matmul(hessian.to(at::kDouble)) * d).sum().item<double>();
}

namespace {

// The uniform grid of group g, columns [c0, c0 + n) of W (double [O, I]), into its column of
// scales and zeros (float [O, NG]); weights under `mask` (bool [O, I] or undefined) are left
// out (set to 0, which the range always holds).
void fit_group(const at::Tensor& W, const at::Tensor& mask, int64_t c0, int64_t n, int64_t g,
               int bits, at::Tensor& scales, at::Tensor& zeros) {
    at::Tensor wg = W.narrow(1, c0, n);
    if (mask.defined()) wg = wg.masked_fill(mask.narrow(1, c0, n), 0.0);
    at::Tensor scale, zero;
    uniform_group_params(wg.to(at::kFloat), bits, scale, zero);
    scales.narrow(1, g, 1).copy_(scale), zeros.narrow(1, g, 1).copy_(zero);
}

void check_inputs(const at::Tensor& w, const at::Tensor& h, const GptqParams& p,
                  const at::Tensor& sparse) {
    check_quant_params(p.bits, p.group_size);
    if (p.block_size < 1 || p.damp < 0)
        throw ConfigError("gptq: block_size >= 1 and damp >= 0 required");
    if (w.dim() != 2) throw ShapeError("gptq: weight must be [out, in]");
    const int64_t I = w.size(1);
    if (h.dim() != 2 || h.size(0) != I || h.size(1) != I)
        throw ShapeError("gptq: Hessian must be [" + std::to_string(I) + ", " + std::to_string(I) +
                         "]");
    if (sparse.defined() && sparse.sizes() != w.sizes())
        throw ShapeError("gptq: the sparse mask must be shaped like the weight");
}

// The Cholesky factor (upper) of H^-1 after dampening, H in (permuted) column order.
at::Tensor inverse_factor(at::Tensor H, double damp) {
    H.diagonal().add_(damp * H.diagonal().mean().item<double>());
    // Each [I, I] fp64 matrix is dropped as soon as the next one is made: at most two exist at
    // once (for a Llama-3.2-1B down_proj, 1 GiB instead of 2).
    auto [L, info] = at::linalg_cholesky_ex(H);
    H              = at::Tensor();
    if (info.item<int64_t>() != 0)
        throw NumericError("gptq: Hessian + dampening is not positive definite (raise quant.damp)");
    at::Tensor inv = at::cholesky_inverse(L);
    L              = at::Tensor();
    return at::linalg_cholesky(inv, /*upper=*/true);
}

}  // namespace

QuantizedLinear gptq_quantize(const at::Tensor& w_in, const at::Tensor& hessian,
                              const GptqParams& p, const at::Tensor& sparse_in, at::Tensor* kept) {
    check_inputs(w_in, hessian, p, sparse_in);
    const int64_t O = w_in.size(0), I = w_in.size(1);
    at::Tensor    W      = w_in.to(at::kDouble).clone();
    at::Tensor    H      = hessian.to(at::kDouble).clone();
    at::Tensor    sparse = sparse_in;

    at::Tensor dead = H.diagonal() == 0;  // inputs that are always zero: any value is exact
    H.diagonal().masked_fill_(dead, 1.0);
    W.index_put_({at::indexing::Slice(), dead}, 0.0);

    const int64_t G      = p.group_size > 0 ? p.group_size : I;
    const int64_t NG     = n_groups(I, p.group_size);
    at::Tensor    scales = at::empty({O, NG}, at::kFloat), zeros = at::empty({O, NG}, at::kFloat);
    if (p.static_groups)  // every group fitted up front, in the original column order
        for (int64_t g = 0; g < NG; ++g)
            fit_group(W, sparse, g * G, std::min(G, I - g * G), g, p.bits, scales, zeros);

    at::Tensor perm, invperm;
    if (p.act_order) {
        perm = at::argsort(H.diagonal(), /*dim=*/0, /*descending=*/true);
        W    = W.index_select(1, perm);
        H    = H.index_select(0, perm).index_select(1, perm);
        if (sparse.defined()) sparse = sparse.index_select(1, perm);
        invperm = at::argsort(perm);
    }
    const at::Tensor Hinv = inverse_factor(std::move(H), p.damp);
    const auto*      pidx = p.act_order ? perm.data_ptr<int64_t>() : nullptr;

    at::Tensor Q = at::zeros({O, I}, at::kDouble);  // codes, in (permuted) column order
    at::Tensor K = kept ? at::empty({O, I}, at::kDouble) : at::Tensor();  // values quantized
    for (int64_t i1 = 0; i1 < I; i1 += p.block_size) {
        const int64_t i2 = std::min(i1 + p.block_size, I), n = i2 - i1;
        at::Tensor    W1 = W.narrow(1, i1, n).clone();
        at::Tensor    E1 = at::zeros({O, n}, at::kDouble);
        at::Tensor    H1 = Hinv.narrow(0, i1, n).narrow(1, i1, n);
        for (int64_t i = 0; i < n; ++i) {
            const int64_t col = i1 + i;
            // A group starts: fitted, as the reference does, on W as it stood when this block
            // began (this block's own error feedback is not in it yet). Static groups: the
            // group of the column's original position.
            if (!p.static_groups && col % G == 0)
                fit_group(W, sparse, col, std::min(G, I - col), col / G, p.bits, scales, zeros);
            const int64_t    g     = (p.static_groups && pidx ? pidx[col] : col) / G;
            const at::Tensor scale = scales.narrow(1, g, 1), zero = zeros.narrow(1, g, 1);
            at::Tensor       w    = W1.narrow(1, i, 1);                                    // [O, 1]
            at::Tensor       code = uniform_codes(w.to(at::kFloat), scale, zero, p.bits);  // [O, 1]
            Q.narrow(1, col, 1).copy_(code);
            if (K.defined()) K.narrow(1, col, 1).copy_(w);
            at::Tensor wq = (code - zero).to(at::kDouble) * scale.to(at::kDouble);
            // Sparse weights are stored apart at the value they have now: no error (SpQR).
            if (sparse.defined()) wq = at::where(sparse.narrow(1, col, 1), w, wq);
            const double d   = H1[i][i].item<double>();
            at::Tensor   err = (w - wq) / d;
            W1.narrow(1, i, n - i).sub_(err.matmul(H1.narrow(0, i, 1).narrow(1, i, n - i)));
            E1.narrow(1, i, 1).copy_(err);
        }
        if (i2 < I)
            W.narrow(1, i2, I - i2).sub_(E1.matmul(Hinv.narrow(0, i1, n).narrow(1, i2, I - i2)));
    }

    QuantizedLinear q;
    q.bits       = p.bits;
    q.group_size = p.group_size;
    q.scales     = scales.to(at::kHalf);
    q.zeros      = zeros.to(at::kHalf);
    if (p.act_order) {
        Q = Q.index_select(1, invperm);
        if (K.defined()) K = K.index_select(1, invperm);
        // Column c (original order) sits at permuted position invperm[c]; its group follows
        // that, except with static groups (fitted in the original order).
        if (p.group_size > 0 && !p.static_groups) q.g_idx = invperm.div(G, "floor").to(at::kInt);
    }
    q.codes = Q.to(at::kByte);
    if (kept) *kept = K.to(at::kFloat);
    return q;
}

}  // namespace rq::quant
