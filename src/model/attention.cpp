// Blocked exact causal attention with a recomputing backward (requant/model/attention.h).
// Legend: B batch, H query heads, Hkv key/value heads, R = H/Hkv, G = B*Hkv groups, T positions,
// D head_dim, n query positions of a block [t0, t0+n), t1 = t0 + n keys visible to it.
// A group stacks the R query heads that share a key/value head along the row axis,
// [G, R*n, D], so one GEMM serves them without copying K/V.
#include "requant/model/attention.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "requant/error.h"
#include "requant/model/profile_scopes.h"

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

// Scores of queries [t0, t0+n) of every group against keys [0, t0+n), causal mask added inside
// the GEMM (a separate masked_fill pass costs a third of the attention time on CPU).
// qb [G, R*n, D], kt [G, D, T] -> [G, R*n, t0+n].
at::Tensor block_scores(const at::Tensor& qb, const at::Tensor& kt, const Shape& s, int64_t t0,
                        int64_t n) {
    const int64_t t1   = t0 + n;
    at::Tensor    mask = at::full({n, t1}, -std::numeric_limits<double>::infinity(), qb.options())
                          .triu(t0 + 1)
                          .repeat({s.R, 1});  // [R*n, t1]
    return at::baddbmm(mask.expand({s.G, s.R * n, t1}), qb, kt.narrow(2, 0, t1), 1.0, s.scale);
}

// The query rows of block [t0, t0+n) of x [G, R, T, D] as [G, R*n, D].
at::Tensor block_rows(const at::Tensor& x4, int64_t t0, int64_t n, const Shape& s) {
    return x4.narrow(2, t0, n).reshape({s.G, s.R * n, s.D});
}

at::Tensor blocked_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           int64_t block) {
    const Shape s  = shape_of(q, k, v);
    at::Tensor  q4 = q.reshape({s.G, s.R, s.T, s.D});
    at::Tensor  kt = k.transpose(2, 3).reshape({s.G, s.D, s.T});
    at::Tensor  vg = v.reshape({s.G, s.T, s.D});
    at::Tensor  o4 = at::empty({s.G, s.R, s.T, s.D}, q.options());
    for (int64_t t0 = 0; t0 < s.T; t0 += block) {
        const int64_t n = std::min(block, s.T - t0);
        at::Tensor    p = at::softmax(block_scores(block_rows(q4, t0, n, s), kt, s, t0, n), -1);
        o4.narrow(2, t0, n).copy_(at::bmm(p, vg.narrow(1, 0, t0 + n)).view({s.G, s.R, n, s.D}));
    }
    return o4.view({s.B, s.H, s.T, s.D});
}

struct BlockedAttention : torch::autograd::Function<BlockedAttention> {
    static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                              const at::Tensor& k, const at::Tensor& v, int64_t block) {
        ctx->save_for_backward({q, k, v});
        ctx->saved_data["block"] = block;
        return blocked_forward(q, k, v, block);
    }

    // Per block: recompute p, then the autograd formulas of bmm, softmax and baddbmm in the
    // order autograd applies them; dK and dV accumulate over the blocks that see each key.
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list    grad) {
        const auto    saved = ctx->get_saved_variables();
        const int64_t block = ctx->saved_data["block"].toInt();
        const Shape   s     = shape_of(saved[0], saved[1], saved[2]);
        at::Tensor    q4    = saved[0].reshape({s.G, s.R, s.T, s.D});
        at::Tensor    kt    = saved[1].transpose(2, 3).reshape({s.G, s.D, s.T});
        at::Tensor    vg    = saved[2].reshape({s.G, s.T, s.D});
        at::Tensor    do4   = grad[0].reshape({s.G, s.R, s.T, s.D});
        at::Tensor    dq4   = at::empty_like(q4);
        at::Tensor    dk    = at::zeros({s.G, s.T, s.D}, q4.options());
        at::Tensor    dv    = at::zeros({s.G, s.T, s.D}, q4.options());
        for (int64_t t0 = 0; t0 < s.T; t0 += block) {
            const int64_t n = std::min(block, s.T - t0), t1 = t0 + n;
            at::Tensor    qb  = block_rows(q4, t0, n, s);        // [G, R*n, D]
            at::Tensor    dob = block_rows(do4, t0, n, s);       // [G, R*n, D]
            at::Tensor    sc  = block_scores(qb, kt, s, t0, n);  // [G, R*n, t1]
            at::Tensor    p   = at::softmax(sc, -1);
            at::Tensor    vb  = vg.narrow(1, 0, t1);          // [G, t1, D]
            at::Tensor    dp  = dob.bmm(vb.transpose(1, 2));  // [G, R*n, t1]
            dv.narrow(1, 0, t1).add_(p.transpose(1, 2).bmm(dob));
            at::Tensor ds  = at::_softmax_backward_data(dp, p, -1, sc.scalar_type());
            at::Tensor dqb = ds.bmm(kt.narrow(2, 0, t1).transpose(1, 2)) * s.scale;
            at::Tensor dkt = qb.transpose(1, 2).bmm(ds) * s.scale;  // [G, D, t1]
            dq4.narrow(2, t0, n).copy_(dqb.view({s.G, s.R, n, s.D}));
            dk.narrow(1, 0, t1).add_(dkt.transpose(1, 2));
        }
        return {dq4.view({s.B, s.H, s.T, s.D}), dk.view({s.B, s.Hkv, s.T, s.D}),
                dv.view({s.B, s.Hkv, s.T, s.D}), at::Tensor()};
    }
};

}  // namespace

int64_t attention_block(int64_t B, int64_t H, int64_t T) {
    const int64_t rows = kAttentionBlockElems / std::max<int64_t>(1, B * H * T);
    return std::min(T, std::max<int64_t>(16, rows));
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t block) {
    RECORD_USER_SCOPE(kScopeAttention);
    if (block <= 0) block = attention_block(q.size(0), q.size(1), q.size(2));
    return BlockedAttention::apply(q, k, v, block);
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
    return at::matmul(p, v).view({s.B, s.H, s.T, s.D});
}

}  // namespace rq::model
