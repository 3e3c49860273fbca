// Fused RMSNorm and SwiGLU, forward and backward (requant/model/block_ops.h).
// Legend: N rows, C features (RMSNorm), n elements (SwiGLU).
#include "requant/model/block_ops.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <vector>

#include "requant/error.h"
#include "requant/model/profile_scopes.h"
#include "requant/model/twin_grad.h"
#include "requant/model/vec_math.h"

namespace rq::model {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Elements per parallel task: enough to amortise the scheduling.
constexpr int64_t kGrainElems = 1 << 14;
// Rows per chunk of the norm weight's gradient: fixed, so its sum order is too.
constexpr int64_t kWeightGradRows = 256;

bool fused_dtype(const at::Tensor& t) {
    return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}

int64_t grain_rows(int64_t C) {
    return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, C));
}

// y = x * r * w per row, r = 1 / sqrt(mean(x^2) + eps); r [N] kept for the backward.
template <class T>
void rms_norm_forward(const T* x, const T* w, T* y, T* r, int64_t N, int64_t C, double eps) {
    at::parallel_for(0, N, grain_rows(C), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            const T* xi = x + i * C;
            T*       yi = y + i * C;
            const T  ss = lane_sum<T>(C, [&](int64_t j) { return xi[j] * xi[j]; });
            const T  ri = T(1.0 / std::sqrt(double(ss) / double(C) + eps));
            for (int64_t j = 0; j < C; ++j) yi[j] = xi[j] * ri * w[j];
            r[i] = ri;
        }
    });
}

// dx = r * w * g - x * r^3 / C * sum_j(g_j w_j x_j) per row.
template <class T>
void rms_norm_backward_x(const T* g, const T* x, const T* w, const T* r, T* dx, int64_t N,
                         int64_t C) {
    at::parallel_for(0, N, grain_rows(C), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            const T *gi = g + i * C, *xi = x + i * C;
            T*       di  = dx + i * C;
            const T  dot = lane_sum<T>(C, [&](int64_t j) { return gi[j] * w[j] * xi[j]; });
            const T  ri  = r[i],
                    coef = T(double(ri) * double(ri) * double(ri) * double(dot) / double(C));
            for (int64_t j = 0; j < C; ++j) di[j] = ri * w[j] * gi[j] - xi[j] * coef;
        }
    });
}

// dw = sum over rows of g * x * r, in chunks of kWeightGradRows summed in order.
template <class T>
void rms_norm_backward_w(const T* g, const T* x, const T* r, T* dw, int64_t N, int64_t C) {
    const int64_t  chunks = (N + kWeightGradRows - 1) / kWeightGradRows;
    std::vector<T> part(std::size_t(chunks * C), T(0));
    at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
        for (int64_t c = b; c < e; ++c) {
            T* p = part.data() + c * C;
            for (int64_t i = c * kWeightGradRows; i < std::min(N, (c + 1) * kWeightGradRows); ++i)
                for (int64_t j = 0; j < C; ++j) p[j] += g[i * C + j] * x[i * C + j] * r[i];
        }
    });
    for (int64_t j = 0; j < C; ++j) {
        double s = 0;
        for (int64_t c = 0; c < chunks; ++c) s += double(part[std::size_t(c * C + j)]);
        dw[j] = T(s);
    }
}

struct RmsNormFn : torch::autograd::Function<RmsNormFn> {
    static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x0, const at::Tensor& w,
                              double eps) {
        const at::Tensor x = x0.contiguous();
        const int64_t    C = x.size(-1), N = x.numel() / std::max<int64_t>(1, C);
        at::Tensor       y = at::empty_like(x), r = at::empty({N}, x.options());
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rms_norm", [&] {
            rms_norm_forward(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                             r.data_ptr<scalar_t>(), N, C, eps);
        });
        ctx->save_for_backward({x0, w, r});
        ctx->saved_data["eps"] = eps;
        return y;
    }

    static variable_list backward(AutogradContext* ctx, variable_list grad) {
        const auto saved = ctx->get_saved_variables();
        if (backward_needs_graph()) {
            const double eps = ctx->saved_data["eps"].toDouble();
            auto         d =
                twin_backward([eps](const auto& in) { return rms_norm_ref(in[0], in[1], eps); },
                              {saved[0], saved[1]}, grad[0]);
            return {d[0], d[1], at::Tensor()};
        }
        const at::Tensor x = saved[0].contiguous(), &w = saved[1], &r = saved[2];
        const at::Tensor g = grad[0].contiguous();
        const int64_t    C = x.size(-1), N = r.numel();
        at::Tensor       dx, dw;
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rms_norm_backward", [&] {
            if (ctx->needs_input_grad(0)) {
                dx = at::empty_like(x);
                rms_norm_backward_x(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                    w.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                                    dx.data_ptr<scalar_t>(), N, C);
            }
            if (ctx->needs_input_grad(1)) {
                dw = at::empty_like(w);
                rms_norm_backward_w(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                    r.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), N, C);
            }
        });
        return {dx, dw, at::Tensor()};
    }
};

// h = g * s * u with s = sigmoid(g) (ATen's vectorized sigmoid: exp_vec's SSE lanes with a
// division per element ran 5x slower than it here).
template <class T>
void swiglu_forward(const T* g, const T* s, const T* u, T* h, int64_t n) {
    at::parallel_for(0, n, kGrainElems, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) h[i] = g[i] * s[i] * u[i];
    });
}

// dg = dh * u * s * (1 + g * (1 - s)), du = dh * g * s, with s = sigmoid(g).
template <class T>
void swiglu_backward(const T* dh, const T* g, const T* s, const T* u, T* dg, T* du, int64_t n) {
    at::parallel_for(0, n, kGrainElems, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            dg[i] = dh[i] * u[i] * (s[i] * (T(1) + g[i] * (T(1) - s[i])));
            du[i] = dh[i] * (g[i] * s[i]);
        }
    });
}

struct SwigluFn : torch::autograd::Function<SwigluFn> {
    static at::Tensor forward(AutogradContext* ctx, const at::Tensor& g0, const at::Tensor& u0) {
        const at::Tensor g = g0.contiguous(), u = u0.contiguous();
        const at::Tensor s = at::sigmoid(g);
        at::Tensor       h = at::empty_like(g);
        AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "swiglu", [&] {
            swiglu_forward(g.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                           h.data_ptr<scalar_t>(), g.numel());
        });
        ctx->save_for_backward({g0, u0});
        return h;
    }

    static variable_list backward(AutogradContext* ctx, variable_list grad) {
        const auto saved = ctx->get_saved_variables();
        if (backward_needs_graph())
            return twin_backward([](const auto& in) { return swiglu_ref(in[0], in[1]); },
                                 {saved[0], saved[1]}, grad[0]);
        const at::Tensor g = saved[0].contiguous(), u = saved[1].contiguous();
        const at::Tensor dh = grad[0].contiguous(), s = at::sigmoid(g);
        at::Tensor       dg = at::empty_like(g), du = at::empty_like(u);  // one pass makes both
        AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "swiglu_backward", [&] {
            swiglu_backward(dh.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
                            u.data_ptr<scalar_t>(), dg.data_ptr<scalar_t>(),
                            du.data_ptr<scalar_t>(), g.numel());
        });
        return {ctx->needs_input_grad(0) ? dg : at::Tensor(),
                ctx->needs_input_grad(1) ? du : at::Tensor()};
    }
};

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
    RECORD_USER_SCOPE(kScopeRmsNorm);
    if (w.dim() != 1 || x.dim() < 1 || x.size(-1) != w.size(0))
        throw ShapeError("rms_norm: x [..., C] and w [C]");
    if (!fused_dtype(x) || x.scalar_type() != w.scalar_type()) return rms_norm_ref(x, w, eps);
    return RmsNormFn::apply(x, w.contiguous(), eps);
}

at::Tensor rms_norm_ref(const at::Tensor& x, const at::Tensor& w, double eps) {
    return x * at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * w;
}

at::Tensor swiglu(const at::Tensor& g, const at::Tensor& u) {
    RECORD_USER_SCOPE(kScopeSwiglu);
    if (g.sizes() != u.sizes()) throw ShapeError("swiglu: gate and up of one shape");
    if (!fused_dtype(g) || g.scalar_type() != u.scalar_type()) return swiglu_ref(g, u);
    return SwigluFn::apply(g, u);
}

at::Tensor swiglu_ref(const at::Tensor& g, const at::Tensor& u) {
    return at::silu(g) * u;
}

}  // namespace rq::model
