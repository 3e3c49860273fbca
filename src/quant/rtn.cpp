// Round-to-nearest uniform quantization (requant/quant/rtn.h).
#include "requant/quant/rtn.h"

#include <ATen/ATen.h>
#include <c10/util/Half.h>

#include <cmath>

#include "requant/error.h"

namespace rq::quant {

void check_quant_params(int bits, int64_t group_size) {
    if (bits < 2 || bits > 8)
        throw ConfigError("quant.bits must be in 2..8, got " + std::to_string(bits));
    if (group_size < 0 || group_size == 1)
        throw ConfigError("quant.group_size must be 0 (per channel) or >= 2, got " +
                          std::to_string(group_size));
}

void uniform_group_params(const at::Tensor& w_group, int bits, at::Tensor& scale,
                          at::Tensor& zero) {
    const double maxq = double((1 << bits) - 1);
    // The range always holds 0 (as the reference GPTQ quantizer): a group of one sign would
    // otherwise clamp its zero point and fall off the grid.
    at::Tensor mn = std::get<0>(w_group.min(1, /*keepdim=*/true)).clamp_max(0);
    at::Tensor mx = std::get<0>(w_group.max(1, /*keepdim=*/true)).clamp_min(0);
    at::Tensor s  = (mx - mn).clamp_min(1e-5) / maxq;
    // Round the scale UP to fp16: rounding down would stretch the range past the last code.
    at::Tensor h  = s.to(at::kHalf);
    at::Tensor up = (h.view(at::kShort) + 1).view(at::kHalf);
    scale         = at::where(h.to(at::kFloat) < s, up.to(at::kFloat), h.to(at::kFloat));
    zero          = (-mn / scale).round().clamp(0, maxq);
}

at::Tensor uniform_codes(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero,
                         int bits) {
    return ((w / scale).round() + zero).clamp(0, double((1 << bits) - 1));
}

QuantizedLinear rtn_quantize(const at::Tensor& w_in, const RtnParams& p) {
    check_quant_params(p.bits, p.group_size);
    if (w_in.dim() != 2) throw ShapeError("rtn: weight must be [out, in]");
    const at::Tensor w = w_in.to(at::kFloat).contiguous();
    const int64_t    O = w.size(0), I = w.size(1), G = p.group_size > 0 ? p.group_size : I;
    const int64_t    NG = n_groups(I, p.group_size);
    QuantizedLinear  q;
    q.bits            = p.bits;
    q.group_size      = p.group_size;
    at::Tensor codes  = at::empty({O, I}, at::kFloat);
    at::Tensor scales = at::empty({O, NG}, at::kFloat), zeros = at::empty({O, NG}, at::kFloat);
    for (int64_t g = 0; g < NG; ++g) {
        const int64_t c0 = g * G, n = std::min(G, I - c0);
        at::Tensor    wg = w.narrow(1, c0, n), s, z;
        uniform_group_params(wg, p.bits, s, z);
        codes.narrow(1, c0, n).copy_(uniform_codes(wg, s, z, p.bits));
        scales.narrow(1, g, 1).copy_(s);
        zeros.narrow(1, g, 1).copy_(z);
    }
    q.codes  = codes.to(at::kByte);
    q.scales = scales.to(at::kHalf);
    q.zeros  = zeros.to(at::kHalf);
    return q;
}

QuantizedLinear rtn_quantize_ref(const at::Tensor& w_in, const RtnParams& p) {
    check_quant_params(p.bits, p.group_size);
    if (w_in.dim() != 2) throw ShapeError("rtn: weight must be [out, in]");
    const at::Tensor w = w_in.to(at::kFloat).contiguous();
    const int64_t    O = w.size(0), I = w.size(1), G = p.group_size > 0 ? p.group_size : I;
    const int64_t    NG   = n_groups(I, p.group_size);
    const float      maxq = float((1 << p.bits) - 1);
    QuantizedLinear  q;
    q.bits         = p.bits;
    q.group_size   = p.group_size;
    q.codes        = at::empty({O, I}, at::kByte);
    q.scales       = at::empty({O, NG}, at::kHalf);
    q.zeros        = at::empty({O, NG}, at::kHalf);
    const float* W = w.data_ptr<float>();
    uint8_t*     C = q.codes.data_ptr<uint8_t>();
    auto*        S = q.scales.data_ptr<at::Half>();
    auto*        Z = q.zeros.data_ptr<at::Half>();
    for (int64_t r = 0; r < O; ++r)
        for (int64_t g = 0; g < NG; ++g) {
            const int64_t c0 = g * G, c1 = std::min(I, c0 + G);
            float         mn = 0, mx = 0;  // the range always holds 0
            for (int64_t c = c0; c < c1; ++c)
                mn = std::min(mn, W[r * I + c]), mx = std::max(mx, W[r * I + c]);
            const float s = std::max(mx - mn, 1e-5f) / maxq;
            at::Half    h(s);
            if (float(h) < s) h = at::Half(uint16_t(h.x + 1), at::Half::from_bits());  // round up
            const float scale = float(h);
            const float zero  = std::min(std::max(std::nearbyint(-mn / scale), 0.0f), maxq);
            S[r * NG + g]     = at::Half(scale);
            Z[r * NG + g]     = at::Half(zero);
            for (int64_t c = c0; c < c1; ++c) {
                const float code = std::nearbyint(W[r * I + c] / scale) + zero;
                C[r * I + c]     = uint8_t(std::min(std::max(code, 0.0f), maxq));
            }
        }
    return q;
}

}  // namespace rq::quant
