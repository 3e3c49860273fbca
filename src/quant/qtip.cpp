// QTIP on one linear: padding, incoherence, BlockLDLQ over the trellis (requant/quant/qtip.h).
#include "requant/quant/qtip.h"

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <vector>

#include "requant/error.h"

namespace rq::quant {
namespace {

constexpr int64_t kTile = 16;

int64_t pad16(int64_t n) {
    return (n + kTile - 1) / kTile * kTile;
}

}  // namespace

void block_ldl(const at::Tensor& h, at::Tensor& l, at::Tensor& d) {
    const int64_t n = h.size(0);
    if (n % kTile != 0) throw ShapeError("block_ldl: " + std::to_string(n) + " is not 16k");
    // H = C C^T (Cholesky); with B = blockdiag(C_jj): L = C B^-1, D = B B^T.
    auto [c, info] = at::linalg_cholesky_ex(h.to(at::kDouble));
    if (info.item<int64_t>() != 0)
        throw NumericError("block_ldl: the Hessian is not positive definite (raise the damping)");
    at::Tensor binv = at::zeros_like(c);
    d               = at::zeros_like(c);
    for (int64_t j = 0; j < n; j += kTile) {
        const at::Tensor cj = c.narrow(0, j, kTile).narrow(1, j, kTile);
        binv.narrow(0, j, kTile).narrow(1, j, kTile).copy_(at::linalg_inv(cj));
        d.narrow(0, j, kTile).narrow(1, j, kTile).copy_(cj.matmul(cj.t()));
    }
    l = c.matmul(binv);
}

QtipLinear qtip_quantize(const at::Tensor& w, const at::Tensor& h, const BitshiftTrellis& code,
                         const QtipParams& p) {
    QtipLinear q;
    q.rows = w.size(0), q.cols = w.size(1);
    if (h.size(0) != q.cols || h.size(1) != q.cols)
        throw ShapeError("qtip: X^T X is " + std::to_string(h.size(0)) + "x" +
                         std::to_string(h.size(1)) + " for a linear of " + std::to_string(q.cols) +
                         " inputs");
    q.rows_padded = pad16(q.rows), q.cols_padded = pad16(q.cols);
    const int64_t O = q.rows_padded, I = q.cols_padded;
    // Padding: zero weights; zero rows and columns of H, which the damping makes definite.
    at::Tensor wp = at::zeros({O, I}, at::kDouble);
    wp.narrow(0, 0, q.rows).narrow(1, 0, q.cols).copy_(w);
    at::Tensor hp = at::zeros({I, I}, at::kDouble);
    hp.narrow(0, 0, q.cols).narrow(1, 0, q.cols).copy_(h);
    const double mean_diag = h.to(at::kDouble).diagonal().mean().item<double>();
    hp.diagonal().add_(p.damp * (mean_diag > 0 ? mean_diag : 1.0));

    const Incoherence rows(O, p.seed * 2 + 1), cols(I, p.seed * 2 + 2);
    const at::Tensor  wr      = transform_both(rows, cols, wp);  // double [O, I]
    const at::Tensor  hr      = transform_both(cols, cols, hp);
    double            code_ms = 0;
    for (uint32_t s = 0; s < (1u << kTrellisL); ++s)
        for (int v = 0; v < code.V(); ++v) code_ms += double(code.value(s, v)) * code.value(s, v);
    code_ms /= double(code.V()) * (1u << kTrellisL);
    q.wscale = wr.square().mean().sqrt().item<double>() / (std::sqrt(code_ms) * 0.9);
    if (!(q.wscale > 0)) q.wscale = 1.0;  // an all-zero weight

    at::Tensor l, d;
    block_ldl(hr, l, d);
    const at::Tensor a     = l - at::eye(I, at::kDouble);
    const at::Tensor x     = wr / q.wscale;  // what the code approximates
    at::Tensor       x_hat = at::zeros_like(x);
    const int64_t    nb_r = O / kTile, nb_c = I / kTile, words_per_tile = 16 * code.K();
    q.words = at::zeros({nb_r, nb_c, words_per_tile}, at::kShort);
    std::vector<float> tile(kTile * kTile);
    for (int64_t j = nb_c - 1; j >= 0; --j) {
        const int64_t c0     = j * kTile;
        at::Tensor    target = x.narrow(1, c0, kTile).clone();  // [O, 16]
        if (c0 + kTile < I) {
            const int64_t rest = I - c0 - kTile;
            target += (x.narrow(1, c0 + kTile, rest) - x_hat.narrow(1, c0 + kTile, rest))
                          .matmul(a.narrow(0, c0 + kTile, rest).narrow(1, c0, kTile));
        }
        const at::Tensor tf = target.to(at::kFloat).contiguous();
        for (int64_t i = 0; i < nb_r; ++i) {
            const float* src =
                tf.data_ptr<float>() + i * kTile * kTile;  // rows i*16.., all 16 cols
            std::copy(src, src + kTile * kTile, tile.begin());
            const std::vector<uint16_t> st    = code.quantize_tile(tile.data(), kTile * kTile);
            const std::vector<uint16_t> words = code.pack(st.data(), kTile * kTile);
            auto* out = reinterpret_cast<uint16_t*>(q.words[i][j].data_ptr<int16_t>());
            std::copy(words.begin(), words.end(), out);
            auto xh = x_hat.accessor<double, 2>();
            for (int64_t k = 0; k < kTile * kTile; ++k)
                xh[i * kTile + k / kTile][c0 + k % kTile] =
                    double(code.value(st[std::size_t(k / code.V())], int(k % code.V())));
        }
    }
    const at::Tensor w_hat_p = untransform_both(rows, cols, x_hat * q.wscale);
    q.w_hat = w_hat_p.narrow(0, 0, q.rows).narrow(1, 0, q.cols).to(at::kFloat).contiguous();
    return q;
}

}  // namespace rq::quant
