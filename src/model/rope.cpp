// Rotary position embeddings (requant/model/rope.h).
#include "requant/model/rope.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>

#include <cmath>

#include "requant/model/profile_scopes.h"

namespace rq::model {

at::Tensor rope_inv_freq(const io::LlamaConfig& c) {
    const int64_t D    = c.head_dim;
    at::Tensor    expo = at::arange(0, D, 2, at::kLong).to(at::kFloat) / static_cast<double>(D);
    at::Tensor    inv  = 1.0 / at::pow(c.rope_theta, expo);  // fp32, as HF
    if (c.rope.type != "llama3") return inv;

    // llama3: wavelengths longer than original_ctx/low_freq_factor are divided by `factor`,
    // shorter than original_ctx/high_freq_factor are kept, and the band between is blended.
    const double factor = c.rope.factor, lo = c.rope.low_freq_factor, hi = c.rope.high_freq_factor;
    const double old_ctx     = static_cast<double>(c.rope.original_max_position);
    const double low_wavelen = old_ctx / lo, high_wavelen = old_ctx / hi;
    at::Tensor   wavelen   = 2 * M_PI / inv;
    at::Tensor   scaled    = at::where(wavelen > low_wavelen, inv / factor, inv);
    at::Tensor   smooth    = (old_ctx / wavelen - lo) / (hi - lo);
    at::Tensor   blended   = (1 - smooth) * scaled / factor + smooth * scaled;
    at::Tensor   is_medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    return at::where(is_medium, blended, scaled);
}

RopeTables rope_tables(const io::LlamaConfig& c, int64_t n_pos, at::ScalarType dtype) {
    at::Tensor inv   = rope_inv_freq(c);                             // [D/2]
    at::Tensor pos   = at::arange(n_pos, at::kLong).to(at::kFloat);  // [T]
    at::Tensor freqs = at::outer(pos, inv);                          // [T, D/2] fp32
    at::Tensor emb   = at::cat({freqs, freqs}, -1);                  // [T, D]
    return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor apply_rope(const at::Tensor& x, const RopeTables& rt) {
    RECORD_USER_SCOPE(kScopeRope);
    const int64_t T    = x.size(2);
    const int64_t half = x.size(3) / 2;
    at::Tensor    cos  = rt.cos.narrow(0, 0, T);
    at::Tensor    sin  = rt.sin.narrow(0, 0, T);
    at::Tensor    x1   = x.narrow(3, 0, half);
    at::Tensor    x2   = x.narrow(3, half, half);
    return x * cos + at::cat({-x2, x1}, 3) * sin;
}

}  // namespace rq::model
