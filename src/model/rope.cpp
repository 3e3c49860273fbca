// Rotary position embeddings (requant/model/rope.h).
#include "requant/model/rope.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>

#include "requant/error.h"
#include "requant/model/profile_scopes.h"
#include "requant/model/twin_grad.h"

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

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kRopeGrainRows = 256;  // rows of D per parallel task

// Strides of x [B, nh, T, D] (the last dim contiguous).
struct Rows {
    int64_t nh, T, sb, sh, st;
};

Rows rows_of(const at::Tensor& x) {
    return {x.size(1), x.size(2), x.stride(0), x.stride(1), x.stride(2)};
}

// y = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]; `transpose` applies the
// transpose (the backward: dx = g * cos + rotate_half^T(g * sin)). One task per (b, h).
template <class T>
void rope_rows(const T* x, const Rows& xr, T* y, const Rows& yr, const T* cos, const T* sin,
               int64_t n_heads, int64_t D, bool transpose) {
    const int64_t half = D / 2, T_ = xr.T;
    at::parallel_for(0, n_heads, std::max<int64_t>(1, kRopeGrainRows / T_),
                     [&](int64_t b, int64_t e) {
                         for (int64_t bh = b; bh < e; ++bh) {
                             const int64_t bi = bh / xr.nh, hi = bh % xr.nh;
                             for (int64_t t = 0; t < T_; ++t) {
                                 const T* xi = x + bi * xr.sb + hi * xr.sh + t * xr.st;
                                 T*       yi = y + bi * yr.sb + hi * yr.sh + t * yr.st;
                                 const T *c = cos + t * D, *s = sin + t * D;
                                 if (!transpose) {
                                     for (int64_t d = 0; d < half; ++d)
                                         yi[d] = xi[d] * c[d] + -xi[d + half] * s[d];
                                     for (int64_t d = half; d < D; ++d)
                                         yi[d] = xi[d] * c[d] + xi[d - half] * s[d];
                                 } else {
                                     for (int64_t d = 0; d < half; ++d)
                                         yi[d] = xi[d] * c[d] + xi[d + half] * s[d + half];
                                     for (int64_t d = half; d < D; ++d)
                                         yi[d] = xi[d] * c[d] + -xi[d - half] * s[d - half];
                                 }
                             }
                         }
                     });
}

// out (allocated by the caller, [B, nh, T, D]) = rope (or its transpose) of in.
void rope_into(const at::Tensor& in, at::Tensor& out, const at::Tensor& cos, const at::Tensor& sin,
               bool transpose) {
    const int64_t n_heads = in.size(0) * in.size(1), D = in.size(3);
    AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "rope", [&] {
        rope_rows(in.data_ptr<scalar_t>(), rows_of(in), out.data_ptr<scalar_t>(), rows_of(out),
                  cos.data_ptr<scalar_t>(), sin.data_ptr<scalar_t>(), n_heads, D, transpose);
    });
}

struct RopeFn : torch::autograd::Function<RopeFn> {
    // x [B, nh, T, D] (last dim contiguous), cos and sin contiguous [T, D] -> contiguous y
    static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                              const at::Tensor& sin) {
        at::Tensor y = at::empty(x.sizes(), x.options());
        rope_into(x, y, cos, sin, false);
        ctx->save_for_backward({cos, sin});
        ctx->saved_data["strides"] = x.strides().vec();
        return y;
    }

    // dx laid out as x was (a transposed view of a linear's output stays one), so the views
    // before RoPE pass the gradient on without a copy.
    static variable_list backward(AutogradContext* ctx, variable_list grad) {
        const auto saved = ctx->get_saved_variables();
        if (backward_needs_graph()) {  // rope^T(g) = g * cos + rotate_half^T(g * sin), in ATen
            const at::Tensor gs = grad[0] * saved[1];
            const int64_t    h  = gs.size(3) / 2;
            return {grad[0] * saved[0] + at::cat({gs.narrow(3, h, h), -gs.narrow(3, 0, h)}, 3),
                    at::Tensor(), at::Tensor()};
        }
        const at::Tensor g  = grad[0].stride(3) == 1 ? grad[0] : grad[0].contiguous();
        const auto       st = ctx->saved_data["strides"].toIntVector();
        at::Tensor       dx = at::empty_strided(g.sizes(), st, g.options());
        rope_into(g, dx, saved[0], saved[1], true);
        return {dx, at::Tensor(), at::Tensor()};
    }
};

bool dense_last_dim(const at::Tensor& x) {
    // Each (b, h, t) row is D contiguous values and distinct rows do not overlap.
    return x.stride(3) == 1 && x.is_non_overlapping_and_dense();
}

}  // namespace

at::Tensor apply_rope(const at::Tensor& x, const RopeTables& rt) {
    RECORD_USER_SCOPE(kScopeRope);
    if (x.dim() != 4 || x.size(3) != rt.cos.size(1) || x.size(3) % 2 != 0 ||
        x.size(2) > rt.cos.size(0))
        throw ShapeError("rope: x [B, nh, T, D] with T within the tables and D even");
    const bool fused = (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) &&
                       x.scalar_type() == rt.cos.scalar_type();
    if (!fused) return apply_rope_ref(x, rt);
    const int64_t T = x.size(2);
    return RopeFn::apply(dense_last_dim(x) ? x : x.contiguous(),
                         rt.cos.narrow(0, 0, T).contiguous(), rt.sin.narrow(0, 0, T).contiguous());
}

at::Tensor apply_rope_ref(const at::Tensor& x, const RopeTables& rt) {
    const int64_t T    = x.size(2);
    const int64_t half = x.size(3) / 2;
    at::Tensor    cos  = rt.cos.narrow(0, 0, T);
    at::Tensor    sin  = rt.sin.narrow(0, 0, T);
    at::Tensor    x1   = x.narrow(3, 0, half);
    at::Tensor    x2   = x.narrow(3, half, half);
    return x * cos + at::cat({-x2, x1}, 3) * sin;
}

}  // namespace rq::model
