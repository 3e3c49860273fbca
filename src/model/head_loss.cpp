// Chunked LM head + cross-entropy with a recomputing backward (requant/model/head_loss.h). The
// cross-entropy is fused: the forward keeps each row's log-sum-exp, and the backward turns the
// recomputed logits into their gradient in one pass per row.
// Legend: B batch, n predicted positions, N = B*n rows, C n_embd, V vocab, m rows of a chunk.
#include "requant/model/head_loss.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/Reduction.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "requant/error.h"
#include "requant/model/profile_scopes.h"
#include "requant/model/twin_grad.h"
#include "requant/model/vec_math.h"

namespace rq::model {
namespace {

void check_shapes(const at::Tensor& x, const at::Tensor& head, const at::Tensor& targets) {
    if (x.dim() != 3 || head.dim() != 2 || x.size(2) != head.size(1) || targets.dim() != 2 ||
        targets.size(0) != x.size(0) || targets.size(1) != x.size(1))
        throw ShapeError("head loss: x [B, n, C], head [V, C] and targets [B, n]");
}

// Rows of one cross-entropy per parallel task.
constexpr int64_t kLossGrain = 16;

void check_targets(const at::Tensor& t1, int64_t V) {
    if (t1.numel() == 0) return;
    const int64_t lo = t1.min().item<int64_t>(), hi = t1.max().item<int64_t>();
    if (lo < 0 || hi >= V)
        throw ShapeError("head loss: target ids must lie in [0, " + std::to_string(V) + "), got " +
                         std::to_string(lo < 0 ? lo : hi));
}

// Per row i of logits [m, V]: lse_i = log sum_j exp(l_ij) (max-shifted) and the loss
// lse_i - l_i,t_i. Each row is one thread's two passes, in cache.
template <class T>
void cross_entropy_rows(const T* logits, const int64_t* t, int64_t m, int64_t V, T* loss, T* lse) {
    at::parallel_for(0, m, kLossGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            const T* l  = logits + i * V;
            const T  mx = lane_max(l, V);
            const T  s  = lane_sum<T>(V, [&](int64_t j) { return exp_vec(l[j] - mx); });
            lse[i]      = mx + std::log(s);
            loss[i]     = lse[i] - l[t[i]];
        }
    });
}

// Its backward in place of the recomputed logits: dl_ij = g_i (exp(l_ij - lse_i) - [j == t_i]).
template <class T>
void cross_entropy_backward_rows(T* logits, const int64_t* t, const T* g, const T* lse, int64_t m,
                                 int64_t V) {
    at::parallel_for(0, m, kLossGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            T*      l  = logits + i * V;
            const T gi = g[i], L = lse[i];
            for (int64_t j = 0; j < V; ++j) l[j] = gi * exp_vec(l[j] - L);
            l[t[i]] -= gi;
        }
    });
}

// loss [N] and lse [N] of every row, chunk by chunk.
void chunked_forward(const at::Tensor& x2, const at::Tensor& head, const at::Tensor& t1,
                     int64_t rows, at::Tensor& loss, at::Tensor& lse) {
    const int64_t N = x2.size(0), V = head.size(0);
    loss = at::empty({N}, x2.options());
    lse  = at::empty({N}, x2.options());
    for (int64_t r0 = 0; r0 < N; r0 += rows) {
        const int64_t    m      = std::min(rows, N - r0);
        const at::Tensor logits = at::linear(x2.narrow(0, r0, m), head).contiguous();  // [m, V]
        AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "cross_entropy_rows", [&] {
            cross_entropy_rows(logits.data_ptr<scalar_t>(), t1.data_ptr<int64_t>() + r0, m, V,
                               loss.data_ptr<scalar_t>() + r0, lse.data_ptr<scalar_t>() + r0);
        });
    }
}

// The backward with a graph (create_graph): autograd's formulas for nll_loss, log_softmax and
// the linear layer, per chunk, in ATen ops.
torch::autograd::variable_list backward_with_graph(const at::Tensor& x2, const at::Tensor& head,
                                                   const at::Tensor& t1, const at::Tensor& g,
                                                   int64_t rows, bool want_x, bool want_head) {
    const int64_t N     = x2.size(0);
    at::Tensor    dx    = want_x ? at::empty_like(x2) : at::Tensor();
    at::Tensor    dhead = want_head ? at::zeros_like(head) : at::Tensor();
    for (int64_t r0 = 0; r0 < N; r0 += rows) {
        const int64_t m  = std::min(rows, N - r0);
        at::Tensor    xc = x2.narrow(0, r0, m);
        at::Tensor    ls = at::log_softmax(at::linear(xc, head), 1);  // [m, V]
        at::Tensor    tc = t1.narrow(0, r0, m);
        at::Tensor dls = at::nll_loss_backward(g.narrow(0, r0, m), ls, tc, {}, at::Reduction::None,
                                               -100, at::zeros({}, ls.options()));
        at::Tensor dlogits = at::_log_softmax_backward_data(dls, ls, 1, ls.scalar_type());
        if (want_x) dx.narrow(0, r0, m).copy_(dlogits.mm(head));
        if (want_head) dhead.add_(dlogits.t().mm(xc));
    }
    return {dx, dhead, at::Tensor(), at::Tensor()};
}

struct ChunkedHeadLoss : torch::autograd::Function<ChunkedHeadLoss> {
    // x2 [N, C], head [V, C], t1 int64 [N] -> [N]
    static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x2,
                              const at::Tensor& head, const at::Tensor& t1, int64_t rows) {
        at::Tensor loss, lse;
        chunked_forward(x2, head, t1, rows, loss, lse);
        ctx->save_for_backward({x2, head, t1});
        ctx->saved_data["rows"] = rows;
        ctx->saved_data["lse"]  = lse;  // [N]
        return loss;
    }

    // Per chunk: recompute the logits, turn them into their gradient in place (one pass per
    // row with the forward's lse), then the linear layer's two GEMMs.
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list    grad) {
        const auto       saved = ctx->get_saved_variables();
        const auto &     x2 = saved[0], &head = saved[1], &t1 = saved[2];
        const int64_t    rows = ctx->saved_data["rows"].toInt(), N = x2.size(0), V = head.size(0);
        const bool       want_x = ctx->needs_input_grad(0), want_head = ctx->needs_input_grad(1);
        const at::Tensor g = grad[0].contiguous();  // [N]
        if (backward_needs_graph())
            return backward_with_graph(x2, head, t1, g, rows, want_x, want_head);
        const at::Tensor lse   = ctx->saved_data["lse"].toTensor();
        at::Tensor       dx    = want_x ? at::empty_like(x2) : at::Tensor();
        at::Tensor       dhead = want_head ? at::zeros_like(head) : at::Tensor();
        for (int64_t r0 = 0; r0 < N; r0 += rows) {
            const int64_t m  = std::min(rows, N - r0);
            at::Tensor    xc = x2.narrow(0, r0, m);
            at::Tensor    dl = at::linear(xc, head).contiguous();  // logits, then their gradient
            AT_DISPATCH_FLOATING_TYPES(dl.scalar_type(), "cross_entropy_backward_rows", [&] {
                cross_entropy_backward_rows(dl.data_ptr<scalar_t>(), t1.data_ptr<int64_t>() + r0,
                                            g.data_ptr<scalar_t>() + r0,
                                            lse.data_ptr<scalar_t>() + r0, m, V);
            });
            if (want_x) dx.narrow(0, r0, m).copy_(dl.mm(head));
            if (want_head) dhead.add_(dl.t().mm(xc));
        }
        return {dx, dhead, at::Tensor(), at::Tensor()};
    }
};

}  // namespace

int64_t loss_chunk_rows(int64_t V) {
    return std::max<int64_t>(1, kLossChunkElems / std::max<int64_t>(1, V));
}

at::Tensor head_losses(const at::Tensor& x, const at::Tensor& head, const at::Tensor& targets,
                       int64_t rows) {
    RECORD_USER_SCOPE(kScopeHeadLoss);
    check_shapes(x, head, targets);
    const int64_t B = x.size(0), n = x.size(1), C = x.size(2);
    if (rows <= 0) rows = loss_chunk_rows(head.size(0));
    const at::Tensor t1 = targets.reshape({B * n}).contiguous().to(at::kLong);
    check_targets(t1, head.size(0));
    return ChunkedHeadLoss::apply(x.reshape({B * n, C}), head, t1, rows).view({B, n});
}

at::Tensor head_losses_ref(const at::Tensor& x, const at::Tensor& head, const at::Tensor& targets) {
    check_shapes(x, head, targets);
    const int64_t    B = x.size(0), n = x.size(1), V = head.size(0);
    const at::Tensor logits = at::linear(x, head);  // [B, n, V]
    return at::cross_entropy_loss(logits.reshape({B * n, V}), targets.reshape({B * n}), {},
                                  at::Reduction::None)
        .view({B, n});
}

}  // namespace rq::model
