// AWQ (requant/quant/awq.h): the scale search and the clipping search over one group of linears
// that read the same input. Not the statistics collection (sensitivity/stats): s is stored with
// each linear (in_scale), the next group's folded into the rows that feed it (out_scale).
// Weights are quantized in fp32 exactly as rtn_quantize does; every error is computed in fp64
// from H = x^T x, so a result does not depend on BLAS blocking of the n sampled rows.
#include "requant/quant/awq.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

#include "requant/error.h"
#include "requant/quant/rtn.h"

namespace rq::quant {
namespace {

constexpr double kMinScale = 1e-4;             // floor of mean|x|^alpha (as llm-awq)
constexpr double kHalfMin  = 6.103515625e-05;  // smallest normal fp16: s stays a normal number
constexpr double kHalfMax  = 65504.0;

std::string shape_str(const at::Tensor& t) {
    if (!t.defined()) return "undefined";
    std::ostringstream o;
    o << t.sizes();
    return o.str();
}

void check_params(const AwqParams& p) {
    check_quant_params(p.bits, p.group_size);
    if (p.grid < 1) throw ConfigError("awq: grid must be >= 1, got " + std::to_string(p.grid));
    if (p.clip_grid < 1)
        throw ConfigError("awq: clip_grid must be >= 1, got " + std::to_string(p.clip_grid));
    if (!(p.max_shrink >= 0 && p.max_shrink < 1))
        throw ConfigError("awq: max_shrink must be in [0, 1), got " + std::to_string(p.max_shrink));
}

void check_inputs(const std::vector<AwqLinear>& group, const at::Tensor& x,
                  const at::Tensor& x_abs_mean) {
    if (group.empty()) throw ShapeError("awq: empty group of linears");
    if (!x.defined() || x.dim() != 2)
        throw ShapeError("awq: sampled inputs x must be [n, I], got " + shape_str(x));
    const int64_t I = x.size(1);
    if (!x_abs_mean.defined() || x_abs_mean.dim() != 1 || x_abs_mean.size(0) != I)
        throw ShapeError("awq: x_abs_mean must be [" + std::to_string(I) + "], got " +
                         shape_str(x_abs_mean));
    for (std::size_t i = 0; i < group.size(); ++i) {
        const at::Tensor& w = group[i].w;
        if (!w.defined() || w.dim() != 2 || w.size(1) != I)
            throw ShapeError("awq: weight " + std::to_string(i) + " of the group must be [O, " +
                             std::to_string(I) + "] to match x, got " + shape_str(w));
        const at::Tensor& r = group[i].row_scale;
        if (!r.defined()) continue;
        if (r.dim() != 1 || r.size(0) != w.size(0))
            throw ShapeError("awq: row_scale of weight " + std::to_string(i) + " must be [" +
                             std::to_string(w.size(0)) + "], got " + shape_str(r));
        if (!at::isfinite(r).all().item<bool>() || (r <= 0).any().item<bool>())
            throw NumericError("awq: row_scale must be finite and > 0");
    }
    const at::Tensor m = x_abs_mean.to(at::kDouble);
    if (!at::isfinite(m).all().item<bool>() || (m < 0).any().item<bool>())
        throw NumericError("awq: x_abs_mean must be finite and >= 0");
    if (!at::isfinite(x).all().item<bool>())
        throw NumericError("awq: sampled inputs x are not finite");
}

// s(alpha) = max(mean|x|^alpha, 1e-4) / sqrt(max * min), rounded to fp16: float [I].
at::Tensor alpha_scales(const at::Tensor& x_abs_mean, double alpha) {
    at::Tensor s = x_abs_mean.to(at::kDouble).pow(alpha).clamp_min(kMinScale);
    s            = s / (s.max() * s.min()).sqrt();
    return s.clamp(kHalfMin, kHalfMax).to(at::kHalf).to(at::kFloat);
}

// Output error of each row for inputs with second moment H: fp64 [O], sums to output_error.
at::Tensor row_errors(const at::Tensor& w, const at::Tensor& w_hat, const at::Tensor& H) {
    const at::Tensor d = w_hat.to(at::kDouble) - w.to(at::kDouble);
    return (d.matmul(H) * d).sum(1);
}

// RTN codes of W diag(s), s float [I] (fp16 values), or of W where s is undefined.
QuantizedLinear quantize_scaled(const at::Tensor& w, const at::Tensor& s, const AwqParams& p) {
    QuantizedLinear q = rtn_quantize(s.defined() ? w * s : w, {p.bits, p.group_size});
    if (s.defined()) q.in_scale = s.to(at::kHalf);
    return q;
}

// auto_clip.py on the scaled weights ws = W diag(s) [O, I]: per (row, group) the max range with
// the least error of the group's partial output (x_g / s_g) ws_g^T. H fp64 [I, I] of the raw x.
QuantizedLinear clip_search(const at::Tensor& ws, const at::Tensor& s, const at::Tensor& H,
                            const AwqParams& p) {
    const int64_t O = ws.size(0), I = ws.size(1), G = p.group_size > 0 ? p.group_size : I;
    const int64_t NG = n_groups(I, p.group_size);
    const int64_t n_shrink =
        std::max<int64_t>(1, int64_t(std::floor(p.max_shrink * p.clip_grid + 1e-9)));
    at::Tensor codes  = at::empty({O, I}, at::kFloat);
    at::Tensor scales = at::empty({O, NG}, at::kFloat), zeros = at::empty({O, NG}, at::kFloat);
    const at::Tensor inv_s = s.defined() ? 1.0 / s.to(at::kDouble) : at::ones({I}, at::kDouble);
    for (int64_t g = 0; g < NG; ++g) {
        const int64_t    c0 = g * G, n = std::min(G, I - c0);
        const at::Tensor wg       = ws.narrow(1, c0, n);                  // float [O, n]
        const at::Tensor hg       = H.narrow(0, c0, n).narrow(1, c0, n);  // fp64 [n, n]
        const at::Tensor is       = inv_s.narrow(0, c0, n);               // fp64 [n]
        const at::Tensor absmax   = wg.abs().amax(1, /*keepdim=*/true);   // float [O, 1]
        at::Tensor       best_max = absmax, best_err, sc, ze;
        for (int64_t k = 0; k < n_shrink; ++k) {
            const at::Tensor max_val = absmax * float(1.0 - double(k) / p.clip_grid);
            const at::Tensor cur     = at::minimum(at::maximum(wg, -max_val), max_val);
            uniform_group_params(cur, p.bits, sc, ze);
            const at::Tensor q = (uniform_codes(cur, sc, ze, p.bits) - ze) * sc;
            const at::Tensor d = (q.to(at::kDouble) - wg.to(at::kDouble)) * is;  // unscaled dW
            const at::Tensor e = (d.matmul(hg) * d).sum(1, /*keepdim=*/true);    // fp64 [O, 1]
            if (k == 0) {
                best_err = e;
                continue;
            }
            const at::Tensor better = e < best_err;
            best_err                = at::where(better, e, best_err);
            best_max                = at::where(better, max_val, best_max);
        }
        const at::Tensor cur = at::minimum(at::maximum(wg, -best_max), best_max);
        uniform_group_params(cur, p.bits, sc, ze);
        codes.narrow(1, c0, n).copy_(uniform_codes(cur, sc, ze, p.bits));
        scales.narrow(1, g, 1).copy_(sc);
        zeros.narrow(1, g, 1).copy_(ze);
    }
    QuantizedLinear q;
    q.bits       = p.bits;
    q.group_size = p.group_size;
    q.codes      = codes.to(at::kByte);
    q.scales     = scales.to(at::kHalf);
    q.zeros      = zeros.to(at::kHalf);
    if (s.defined()) q.in_scale = s.to(at::kHalf);
    return q;
}

}  // namespace

std::vector<QuantizedLinear> awq_quantize(const std::vector<AwqLinear>& group, const at::Tensor& x,
                                          const at::Tensor& x_abs_mean, const AwqParams& p,
                                          const BlockLoss& loss) {
    check_params(p);
    check_inputs(group, x, x_abs_mean);
    const at::Tensor        xd = x.to(at::kDouble);
    const at::Tensor        H  = xd.t().matmul(xd);  // fp64 [I, I]
    std::vector<at::Tensor> ws;                      // float [O, I] each
    for (const AwqLinear& l : group) ws.push_back(l.w.to(at::kFloat).contiguous());

    // Scale search. alpha = 0 is s = 1 (RTN); a later alpha must be strictly better. Without
    // it (p.scale false), no s at all.
    std::vector<QuantizedLinear> best;
    double                       best_err = 0;
    at::Tensor                   best_s;
    for (const at::Tensor& w : ws)
        if (!p.scale) best.push_back(quantize_scaled(w, at::Tensor(), p));
    for (int i = 0; p.scale && i < p.grid; ++i) {
        const at::Tensor             s = alpha_scales(x_abs_mean, double(i) / p.grid);
        std::vector<QuantizedLinear> qs;
        std::vector<at::Tensor>      w_hat;
        double                       err = 0;
        for (const at::Tensor& w : ws) {
            qs.push_back(quantize_scaled(w, s, p));
            w_hat.push_back(dequantize(qs.back()));
            if (!loss) err += row_errors(w, w_hat.back(), H).sum().item<double>();
        }
        if (loss) err = loss(w_hat);
        if (i == 0 || err < best_err) best_err = err, best = std::move(qs), best_s = s;
    }
    // The scales applied (llm-awq apply_scale): W diag(s), then the rows by 1/r where the next
    // linear's r is folded in. Then the clipping search, per linear that allows it (its choice
    // taken as it is), or plain RTN of the scaled weights where the rows changed.
    for (std::size_t l = 0; l < group.size(); ++l) {
        const at::Tensor& r = group[l].row_scale;
        if (!(p.clip && group[l].clip) && !r.defined()) continue;
        at::Tensor w = best_s.defined() ? ws[l] * best_s : ws[l];
        if (r.defined()) w = w / r.to(at::kFloat).unsqueeze(1);
        best[l] = p.clip && group[l].clip ? clip_search(w, best_s, H, p)
                                          : rtn_quantize(w, {p.bits, p.group_size});
        if (best_s.defined()) best[l].in_scale = best_s.to(at::kHalf);
        if (r.defined()) best[l].out_scale = r.to(at::kHalf);
    }
    return best;
}

}  // namespace rq::quant
