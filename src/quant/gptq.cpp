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

QuantizedLinear gptq_quantize(const at::Tensor& w_in, const at::Tensor& hessian,
                              const GptqParams& p) {
    check_quant_params(p.bits, p.group_size);
    if (p.block_size < 1 || p.damp < 0)
        throw ConfigError("gptq: block_size >= 1 and damp >= 0 required");
    if (w_in.dim() != 2) throw ShapeError("gptq: weight must be [out, in]");
    const int64_t O = w_in.size(0), I = w_in.size(1);
    if (hessian.dim() != 2 || hessian.size(0) != I || hessian.size(1) != I)
        throw ShapeError("gptq: Hessian must be [" + std::to_string(I) + ", " + std::to_string(I) +
                         "]");
    at::Tensor W = w_in.to(at::kDouble).clone();
    at::Tensor H = hessian.to(at::kDouble).clone();

    at::Tensor dead = H.diagonal() == 0;  // inputs that are always zero: any value is exact
    H.diagonal().masked_fill_(dead, 1.0);
    W.index_put_({at::indexing::Slice(), dead}, 0.0);

    at::Tensor perm, invperm;
    if (p.act_order) {
        perm    = at::argsort(H.diagonal(), /*dim=*/0, /*descending=*/true);
        W       = W.index_select(1, perm);
        H       = H.index_select(0, perm).index_select(1, perm);
        invperm = at::argsort(perm);
    }
    H.diagonal().add_(p.damp * H.diagonal().mean().item<double>());
    // Each [I, I] fp64 matrix is dropped as soon as the next one is made: at most two exist at
    // once (for a Llama-3.2-1B down_proj, 1 GiB instead of 2).
    auto [L, info] = at::linalg_cholesky_ex(H);
    H              = at::Tensor();
    if (info.item<int64_t>() != 0)
        throw NumericError("gptq: Hessian + dampening is not positive definite (raise quant.damp)");
    at::Tensor inv  = at::cholesky_inverse(L);
    L               = at::Tensor();
    at::Tensor Hinv = at::linalg_cholesky(inv, /*upper=*/true);
    inv             = at::Tensor();

    const int64_t G      = p.group_size > 0 ? p.group_size : I;
    const int64_t NG     = n_groups(I, p.group_size);
    at::Tensor    Q      = at::zeros({O, I}, at::kDouble);  // codes, in (permuted) column order
    at::Tensor    scales = at::empty({O, NG}, at::kFloat), zeros = at::empty({O, NG}, at::kFloat);
    at::Tensor    scale, zero;
    for (int64_t i1 = 0; i1 < I; i1 += p.block_size) {
        const int64_t i2 = std::min(i1 + p.block_size, I), n = i2 - i1;
        at::Tensor    W1 = W.narrow(1, i1, n).clone();
        at::Tensor    E1 = at::zeros({O, n}, at::kDouble);
        at::Tensor    H1 = Hinv.narrow(0, i1, n).narrow(1, i1, n);
        for (int64_t i = 0; i < n; ++i) {
            const int64_t col = i1 + i;
            if (col % G == 0) {  // a group starts: fit it on the current (updated) weights
                const int64_t gl       = std::min(G, I - col);
                const int64_t in_block = std::min(gl, n - i);
                at::Tensor    wg       = W1.narrow(1, i, in_block);
                if (gl > in_block) wg = at::cat({wg, W.narrow(1, i2, gl - in_block)}, 1);
                uniform_group_params(wg.to(at::kFloat), p.bits, scale, zero);
                scales.narrow(1, col / G, 1).copy_(scale);
                zeros.narrow(1, col / G, 1).copy_(zero);
            }
            at::Tensor w    = W1.narrow(1, i, 1);                                    // [O, 1]
            at::Tensor code = uniform_codes(w.to(at::kFloat), scale, zero, p.bits);  // [O, 1]
            Q.narrow(1, col, 1).copy_(code);
            at::Tensor   wq  = (code - zero).to(at::kDouble) * scale.to(at::kDouble);
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
        // Column c (original order) sits at permuted position invperm[c]; its group follows that.
        if (p.group_size > 0) q.g_idx = invperm.div(G, "floor").to(at::kInt);
    }
    q.codes = Q.to(at::kByte);
    return q;
}

}  // namespace rq::quant
