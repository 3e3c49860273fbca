// Blocked exact causal attention with a recomputing backward (requant/model/attention.h).
// Legend: B batch, H query heads, Hkv key/value heads, R = H/Hkv, G = B*Hkv groups, T positions,
// D head_dim, n query positions of a block [t0, t0+n), t1 = t0 + n keys visible to it.
// A group stacks the R query heads that share a key/value head position-major along the row
// axis, [G, T*R, D] (row t*R + r: position t, head r), so one GEMM serves them without copying
// K/V, and a block of positions is a view of R*n consecutive rows.
#include "requant/model/attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "requant/error.h"
#include "requant/model/attention_f32.h"
#include "requant/model/profile_scopes.h"
#include "requant/model/twin_grad.h"
#include "requant/model/vec_math.h"

namespace rq::model {
namespace {

struct Shape {
    int64_t B, H, Hkv, R, G, T, D;
    double  scale;
};

Shape shape_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    if (q.dim() != 4 || k.dim() != 4 || k.sizes() != v.sizes() || q.size(0) != k.size(0) ||
        q.size(2) != k.size(2) || q.size(3) != k.size(3) || q.size(1) % k.size(1) != 0)
        throw ShapeError("attention: q [B, H, T, D] and k, v [B, Hkv, T, D] with H % Hkv == 0");
    Shape s{q.size(0), q.size(1), k.size(1), 0, 0, q.size(2), q.size(3), 0};
    s.R     = s.H / s.Hkv;
    s.G     = s.B * s.Hkv;
    s.scale = 1.0 / std::sqrt(double(s.D));
    return s;
}

// Rows of one softmax per parallel task: enough work per task to amortise the scheduling.
constexpr int64_t kSoftmaxGrain = 64;

// Applies `row(ptr, pos)` to every row of x [G, R*n, t1] (contiguous): row i of a group is
// query position t0 + i / R. Rows are independent, so the result does not depend on threads.
template <class F>
void for_causal_rows(const at::Tensor& x, int64_t t0, int64_t R, F row) {
    const int64_t rows = x.size(0) * x.size(1), per = x.size(1), L = x.size(2);
    at::parallel_for(0, rows, kSoftmaxGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) row(i * L, t0 + (i % per) / R);
    });
}

void check_scores(const at::Tensor& s, int64_t t0, int64_t R) {
    if (s.dim() != 3 || !s.is_contiguous() || R < 1 || s.size(1) % R != 0 ||
        s.size(2) != t0 + s.size(1) / R)
        throw ShapeError("causal softmax: contiguous scores [G, R*n, t0+n]");
}

// The operands of one attention call, position-major: q [G, T*R, D], k and v [G, T, D].
struct Operands {
    at::Tensor q, k, v;
};

Operands operands_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const Shape& s) {
    return {q.reshape({s.B, s.Hkv, s.R, s.T, s.D})
                .permute({0, 1, 3, 2, 4})
                .contiguous()
                .view({s.G, s.T * s.R, s.D}),
            k.contiguous().view({s.G, s.T, s.D}), v.contiguous().view({s.G, s.T, s.D})};
}

// Probabilities of queries [t0, t0+n) against keys [0, t0+n): [G, R*n, t0+n].
at::Tensor block_probs(const Operands& x, const Shape& s, int64_t t0, int64_t n) {
    const int64_t t1 = t0 + n;
    at::Tensor p = at::bmm(x.q.narrow(1, t0 * s.R, n * s.R), x.k.narrow(1, 0, t1).transpose(1, 2));
    causal_softmax_(p, t0, s.R, s.scale);
    return p;
}

// o [G, T*R, D] (position-major) -> contiguous [B, T, H, D].
at::Tensor to_bthd(const at::Tensor& o, const Shape& s) {
    return o.view({s.B, s.Hkv, s.T, s.R, s.D})
        .permute({0, 2, 1, 3, 4})
        .contiguous()
        .view({s.B, s.T, s.H, s.D});
}

// [B, T, H, D] -> contiguous [G, T*R, D] (position-major).
at::Tensor from_bthd(const at::Tensor& g, const Shape& s) {
    return g.reshape({s.B, s.T, s.Hkv, s.R, s.D})
        .permute({0, 2, 1, 3, 4})
        .contiguous()
        .view({s.G, s.T * s.R, s.D});
}

// kept: when given, receives each block's probabilities for the backward.
at::Tensor blocked_forward(const Operands& x, const Shape& s, int64_t block,
                           std::vector<at::Tensor>* kept) {
    at::Tensor o = at::empty({s.G, s.T * s.R, s.D}, x.q.options());
    for (int64_t t0 = 0; t0 < s.T; t0 += block) {
        const int64_t n = std::min(block, s.T - t0);
        at::Tensor    p = block_probs(x, s, t0, n);
        o.narrow(1, t0 * s.R, n * s.R).copy_(at::bmm(p, x.v.narrow(1, 0, t0 + n)));
        if (kept) kept->push_back(p);
    }
    return o;
}

// Sum over the blocks of B * H * n * t1 elements.
int64_t probs_elems(int64_t B, int64_t H, int64_t T, int64_t block) {
    int64_t e = 0;
    for (int64_t t0 = 0; t0 < T; t0 += block) {
        const int64_t n = std::min(block, T - t0);
        e += B * H * n * (t0 + n);
    }
    return e;
}

struct BlockedAttention : torch::autograd::Function<BlockedAttention> {
    // q [B, H, T, D], k and v [B, Hkv, T, D] -> [B, T, H, D]
    static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                              const at::Tensor& k, const at::Tensor& v, int64_t block, bool keep) {
        const Shape s = shape_of(q, k, v);
        ctx->save_for_backward({q, k, v});
        ctx->saved_data["block"] = block;
        std::vector<at::Tensor> probs;
        at::Tensor              o = q.scalar_type() == at::kFloat
                                        ? attention_forward_f32(q, k, v, block, keep ? &probs : nullptr)
                                        : to_bthd(blocked_forward(operands_of(q, k, v, s), s, block,
                                                     keep ? &probs : nullptr),
                                                  s);
        if (keep) ctx->saved_data["probs"] = probs;
        return o;
    }

    // Per block: recompute p, then dp = dO V^T, dV += p^T dO, ds = softmax'(dp) (scale folded
    // in), dQ = ds K, dK += ds^T Q. dK and dV accumulate over the blocks that see each key.
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list    grad) {
        const auto saved = ctx->get_saved_variables();
        if (backward_needs_graph()) {
            auto d = twin_backward(
                [](const auto& in) { return causal_attention_ref(in[0], in[1], in[2]); },
                {saved[0], saved[1], saved[2]}, grad[0]);
            return {d[0], d[1], d[2], at::Tensor(), at::Tensor()};
        }
        const int64_t block = ctx->saved_data["block"].toInt();
        const auto kept = ctx->saved_data.count("probs") ? ctx->saved_data["probs"].toTensorVector()
                                                         : std::vector<at::Tensor>();
        if (saved[0].scalar_type() == at::kFloat) {
            auto d = attention_backward_f32(saved[0], saved[1], saved[2], grad[0], block, kept);
            return {d[0], d[1], d[2], at::Tensor(), at::Tensor()};
        }
        const Shape    s = shape_of(saved[0], saved[1], saved[2]);
        const Operands x = operands_of(saved[0], saved[1], saved[2], s);
        const int64_t  B = s.B, R = s.R, T = s.T, D = s.D, Hkv = s.Hkv;
        at::Tensor     dout = from_bthd(grad[0], s);  // [G, T*R, D]
        at::Tensor     dq   = at::empty_like(x.q);
        at::Tensor     dk = at::zeros_like(x.k), dv = at::zeros_like(x.v);
        for (int64_t t0 = 0; t0 < T; t0 += block) {
            const int64_t n = std::min(block, T - t0), t1 = t0 + n;
            at::Tensor    qb = x.q.narrow(1, t0 * R, n * R), dob = dout.narrow(1, t0 * R, n * R);
            at::Tensor    kb = x.k.narrow(1, 0, t1), vb = x.v.narrow(1, 0, t1);  // [G, t1, D]
            at::Tensor    p  = kept.empty() ? block_probs(x, s, t0, n)           // [G, R*n, t1]
                                            : kept[std::size_t(t0 / block)];
            at::Tensor    ds = dob.bmm(vb.transpose(1, 2));  // dp
            dv.narrow(1, 0, t1).baddbmm_(p.transpose(1, 2), dob);
            causal_softmax_backward_(ds, p, t0, R, s.scale);
            dq.narrow(1, t0 * R, n * R).copy_(ds.bmm(kb));
            dk.narrow(1, 0, t1).baddbmm_(ds.transpose(1, 2), qb);
        }
        at::Tensor dq4 =
            dq.view({B, Hkv, T, R, D}).permute({0, 1, 3, 2, 4}).contiguous().view({B, s.H, T, D});
        return {dq4, dk.view({B, Hkv, T, D}), dv.view({B, Hkv, T, D}), at::Tensor(), at::Tensor()};
    }
};

}  // namespace

void causal_softmax_(at::Tensor& s, int64_t t0, int64_t R, double scale) {
    check_scores(s, t0, R);
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "causal_softmax_", [&] {
        scalar_t* d = s.data_ptr<scalar_t>();
        for_causal_rows(s, t0, R, [&](int64_t off, int64_t pos) {
            causal_softmax_row(d + off, pos, s.size(2), scale);
        });
    });
}

void causal_softmax_backward_(at::Tensor& dp, const at::Tensor& p, int64_t t0, int64_t R,
                              double scale) {
    check_scores(dp, t0, R);
    if (p.sizes() != dp.sizes() || !p.is_contiguous() || p.scalar_type() != dp.scalar_type())
        throw ShapeError("causal softmax backward: p and dp of one shape and dtype");
    AT_DISPATCH_FLOATING_TYPES(dp.scalar_type(), "causal_softmax_backward_", [&] {
        scalar_t*       d  = dp.data_ptr<scalar_t>();
        const scalar_t* pp = p.data_ptr<scalar_t>();
        for_causal_rows(dp, t0, R, [&](int64_t off, int64_t pos) {
            causal_softmax_backward_row(d + off, pp + off, pos, dp.size(2), scale);
        });
    });
}

at::Tensor causal_softmax_ref(const at::Tensor& s, int64_t t0, int64_t R, double scale) {
    check_scores(s, t0, R);
    const int64_t n = s.size(1) / R, t1 = s.size(2);
    at::Tensor    pos    = t0 + at::arange(n, s.options().dtype(at::kLong)).repeat_interleave(R);
    at::Tensor    keys   = at::arange(t1, s.options().dtype(at::kLong));
    at::Tensor    masked = (keys.unsqueeze(0) > pos.unsqueeze(1));  // [R*n, t1]
    return at::softmax((s * scale).masked_fill(masked, -std::numeric_limits<double>::infinity()),
                       -1);
}

int64_t attention_block(int64_t B, int64_t H, int64_t T) {
    const int64_t rows = kAttentionBlockElems / std::max<int64_t>(1, B * H * T);
    return std::min({T, kAttentionBlockPositions, std::max<int64_t>(16, rows)});
}

int64_t attention_kept_bytes(int64_t B, int64_t H, int64_t T) {
    const int64_t bytes = 4 * probs_elems(B, H, T, attention_block(B, H, T));
    return bytes <= kAttentionKeepProbsBytes ? bytes : 0;
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t block, int64_t keep_bytes) {
    RECORD_USER_SCOPE(kScopeAttention);
    if (block <= 0) block = attention_block(q.size(0), q.size(1), q.size(2));
    // Only a call that records a graph has a backward to keep them for.
    const bool graph =
        at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
    const int64_t bytes =
        int64_t(q.element_size()) * probs_elems(q.size(0), q.size(1), q.size(2), block);
    // The fp32 kernel reads rows of D contiguous values (the layout the projections give).
    auto rows = [](const at::Tensor& x) { return x.stride(3) == 1 ? x : x.contiguous(); };
    return BlockedAttention::apply(rows(q), rows(k), rows(v), block, graph && bytes <= keep_bytes);
}

at::Tensor causal_attention_ref(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    const Shape s    = shape_of(q, k, v);
    at::Tensor  qg   = q.reshape({s.G, s.R * s.T, s.D});
    at::Tensor  kt   = k.transpose(2, 3).reshape({s.G, s.D, s.T});
    at::Tensor  mask = at::full({s.T, s.T}, -std::numeric_limits<double>::infinity(), q.options())
                          .triu(1)
                          .repeat({s.R, 1});  // [R*T, T]
    at::Tensor scores = at::baddbmm(mask.expand({s.G, s.R * s.T, s.T}), qg, kt, 1.0, s.scale);
    at::Tensor p      = at::softmax(scores, -1).view({s.B, s.Hkv, s.R * s.T, s.T});
    return at::matmul(p, v).view({s.B, s.H, s.T, s.D}).transpose(1, 2);
}

}  // namespace rq::model
