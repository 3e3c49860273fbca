// QTIP on one linear: padding, incoherence, BlockLDLQ over the trellis (requant/quant/qtip.h).
#include "requant/quant/qtip.h"

#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "requant/error.h"

namespace rq::quant {
namespace {

constexpr int64_t kTile = kQtipTile;

uint64_t mix(uint64_t seed, uint64_t side) {  // two sign streams of one linear
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + side;
    z          = (z ^ (z >> 31)) * 0xBF58476D1CE4E5B9ull;
    return z ^ (z >> 29);
}

at::Tensor as_signs(const at::Tensor& negative) {  // bool -> float64 +-1
    return 1.0 - 2.0 * negative.to(at::kDouble);
}

double code_rms(const BitshiftTrellis& code) {
    double ms = 0;
    for (uint32_t s = 0; s < (1u << kTrellisL); ++s)
        for (int v = 0; v < code.V(); ++v) ms += double(code.value(s, v)) * code.value(s, v);
    return std::sqrt(ms / (double(code.V()) * (1u << kTrellisL)));
}

// Quantizes the 16 x 16 tiles of the target block [O', 16] (rows of tiles in parallel): the
// tiles' words into words[:, j], their values into x_hat[:, j 16 ..].
void quantize_block(const BitshiftTrellis& code, const at::Tensor& target, int64_t j,
                    at::Tensor& words, at::Tensor& x_hat) {
    const at::Tensor tf   = target.to(at::kFloat).contiguous();
    const int64_t    nb_r = tf.size(0) / kTile, c0 = j * kTile;
    at::parallel_for(0, nb_r, 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            const float* tile = tf.data_ptr<float>() + i * kTile * kTile;  // row-major 16 x 16
            const std::vector<uint16_t> st = code.quantize_tile(tile, kTile * kTile);
            const std::vector<uint16_t> w  = code.pack(st.data(), kTile * kTile);
            std::copy(w.begin(), w.end(),
                      reinterpret_cast<uint16_t*>(words[i][j].data_ptr<int16_t>()));
            auto xh = x_hat.accessor<double, 2>();
            for (int64_t k = 0; k < kTile * kTile; ++k)
                xh[i * kTile + k / kTile][c0 + k % kTile] =
                    double(code.value(st[std::size_t(k / code.V())], int(k % code.V())));
        }
    });
}

}  // namespace

int64_t qtip_pad(int64_t n) {
    return (n + kTile - 1) / kTile * kTile;
}

at::Tensor qtip_hyb_lut() {
    static const at::Tensor lut = hyb_table(kQtipLutSeed).to(at::kHalf);
    return lut;
}

const BitshiftTrellis& qtip_code(int K, TrellisCode code) {
    static std::mutex                                                      mu;
    static std::map<std::pair<int, int>, std::unique_ptr<BitshiftTrellis>> cache;
    std::lock_guard<std::mutex>                                            lock(mu);
    auto& c = cache[{K, int(code)}];
    if (!c)
        c = std::make_unique<BitshiftTrellis>(
            K, code, code == TrellisCode::Hyb ? qtip_hyb_lut() : at::Tensor());
    return *c;
}

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

QuantizedLinear qtip_quantize(const at::Tensor& w, const at::Tensor& h, int K,
                              const QtipParams& p) {
    const BitshiftTrellis& code = qtip_code(K, p.code);
    QuantizedLinear        q;
    TrellisDense&          t = q.trellis;
    q.bits = K, q.group_size = 0;
    t.code = p.code, t.rows = w.size(0), t.cols = w.size(1), t.factor_seed = p.factor_seed;
    if (h.size(0) != t.cols || h.size(1) != t.cols)
        throw ShapeError("qtip: X^T X is " + std::to_string(h.size(0)) + "x" +
                         std::to_string(h.size(1)) + " for a linear of " + std::to_string(t.cols) +
                         " inputs");
    const int64_t O = qtip_pad(t.rows), I = qtip_pad(t.cols);
    // Padding: zero weights; zero rows and columns of H, which the damping makes definite.
    at::Tensor wp = at::zeros({O, I}, at::kDouble);
    wp.narrow(0, 0, t.rows).narrow(1, 0, t.cols).copy_(w);
    at::Tensor hp = at::zeros({I, I}, at::kDouble);
    hp.narrow(0, 0, t.cols).narrow(1, 0, t.cols).copy_(h);
    const double mean_diag = h.to(at::kDouble).diagonal().mean().item<double>();
    hp.diagonal().add_(p.damp * (mean_diag > 0 ? mean_diag : 1.0));

    t.signs_rows = random_signs(O, mix(p.sign_seed, 1)).lt(0);
    t.signs_cols = random_signs(I, mix(p.sign_seed, 2)).lt(0);
    const Incoherence rows(as_signs(t.signs_rows), p.factor_seed);
    const Incoherence cols(as_signs(t.signs_cols), p.factor_seed);
    const at::Tensor  wr = transform_both(rows, cols, wp);  // double [O, I]
    const at::Tensor  hr = transform_both(cols, cols, hp);
    t.wscale             = float(wr.square().mean().sqrt().item<double>() / (code_rms(code) * 0.9));
    if (!(t.wscale > 0)) t.wscale = 1.0f;  // an all-zero weight

    at::Tensor l, d;
    block_ldl(hr, l, d);
    const at::Tensor a     = l - at::eye(I, at::kDouble);
    const at::Tensor x     = wr / double(t.wscale);  // what the code approximates
    at::Tensor       x_hat = at::zeros_like(x);
    t.words                = at::zeros({O / kTile, I / kTile, kTile * K}, at::kShort);
    for (int64_t j = I / kTile - 1; j >= 0; --j) {
        const int64_t c0     = j * kTile;
        at::Tensor    target = x.narrow(1, c0, kTile).clone();  // [O, 16]
        if (c0 + kTile < I) {
            const int64_t rest = I - c0 - kTile;
            target += (x.narrow(1, c0 + kTile, rest) - x_hat.narrow(1, c0 + kTile, rest))
                          .matmul(a.narrow(0, c0 + kTile, rest).narrow(1, c0, kTile));
        }
        quantize_block(code, target, j, t.words, x_hat);
    }
    return q;
}

at::Tensor qtip_dequantize(const QuantizedLinear& q) {
    const TrellisDense&    t    = q.trellis;
    const BitshiftTrellis& code = qtip_code(q.bits, t.code);
    const int64_t          nb_r = t.words.size(0), nb_c = t.words.size(1), T = kTile * kTile;
    at::Tensor             x     = at::empty({nb_r * kTile, nb_c * kTile}, at::kDouble);
    auto                   xa    = x.accessor<double, 2>();
    const at::Tensor       words = t.words.contiguous();
    for (int64_t i = 0; i < nb_r; ++i)
        for (int64_t j = 0; j < nb_c; ++j) {
            const auto* w  = reinterpret_cast<const uint16_t*>(words[i][j].data_ptr<int16_t>());
            const auto  st = code.unpack(w, int(T));
            for (int64_t k = 0; k < T; ++k)
                xa[i * kTile + k / kTile][j * kTile + k % kTile] =
                    double(code.value(st[std::size_t(k / code.V())], int(k % code.V())));
        }
    const Incoherence rows(as_signs(t.signs_rows), t.factor_seed);
    const Incoherence cols(as_signs(t.signs_cols), t.factor_seed);
    const at::Tensor  w = untransform_both(rows, cols, x * double(t.wscale));
    return w.narrow(0, 0, t.rows).narrow(1, 0, t.cols).to(at::kFloat).contiguous();
}

std::vector<int64_t> qtip_odd_parts(const std::vector<int64_t>& padded_dims) {
    std::set<int64_t> odd;
    for (int64_t n : padded_dims) {
        while (n > 0 && n % 2 == 0) n /= 2;
        if (n > 1) odd.insert(n);
    }
    return {odd.begin(), odd.end()};
}

double qtip_shared_bits(TrellisCode code, const std::vector<int64_t>& odd_parts) {
    double bits = code == TrellisCode::Hyb ? double(int64_t{2} << kHybLutBits) * 16 : 0.0;
    for (int64_t m : odd_parts) bits += double(m * m) * 64;
    return bits;
}

}  // namespace rq::quant
