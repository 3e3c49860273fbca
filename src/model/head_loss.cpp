// Chunked LM head + cross-entropy with a recomputing backward (requant/model/head_loss.h).
// Legend: B batch, n predicted positions, N = B*n rows, C n_embd, V vocab, m rows of a chunk.
#include "requant/model/head_loss.h"

#include <ATen/ATen.h>
#include <ATen/core/Reduction.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

#include "requant/error.h"
#include "requant/model/profile_scopes.h"

namespace rq::model {
namespace {

void check_shapes(const at::Tensor& x, const at::Tensor& head, const at::Tensor& targets) {
    if (x.dim() != 3 || head.dim() != 2 || x.size(2) != head.size(1) || targets.dim() != 2 ||
        targets.size(0) != x.size(0) || targets.size(1) != x.size(1))
        throw ShapeError("head loss: x [B, n, C], head [V, C] and targets [B, n]");
}

at::Tensor chunked_forward(const at::Tensor& x2, const at::Tensor& head, const at::Tensor& t1,
                           int64_t rows) {
    const int64_t N    = x2.size(0);
    at::Tensor    loss = at::empty({N}, x2.options());  // [N]
    for (int64_t r0 = 0; r0 < N; r0 += rows) {
        const int64_t m      = std::min(rows, N - r0);
        at::Tensor    logits = at::linear(x2.narrow(0, r0, m), head);  // [m, V]
        loss.narrow(0, r0, m).copy_(
            at::cross_entropy_loss(logits, t1.narrow(0, r0, m), {}, at::Reduction::None));
    }
    return loss;
}

struct ChunkedHeadLoss : torch::autograd::Function<ChunkedHeadLoss> {
    // x2 [N, C], head [V, C], t1 int64 [N] -> [N]
    static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x2,
                              const at::Tensor& head, const at::Tensor& t1, int64_t rows) {
        ctx->save_for_backward({x2, head, t1});
        ctx->saved_data["rows"] = rows;
        return chunked_forward(x2, head, t1, rows);
    }

    // Per chunk: recompute the logits, then autograd's formulas for nll_loss, log_softmax and
    // the linear layer.
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list    grad) {
        const auto       saved = ctx->get_saved_variables();
        const auto &     x2 = saved[0], &head = saved[1], &t1 = saved[2];
        const int64_t    rows = ctx->saved_data["rows"].toInt(), N = x2.size(0);
        const bool       want_x = ctx->needs_input_grad(0), want_head = ctx->needs_input_grad(1);
        at::Tensor       dx    = want_x ? at::empty_like(x2) : at::Tensor();
        at::Tensor       dhead = want_head ? at::zeros_like(head) : at::Tensor();
        const at::Tensor g     = grad[0].contiguous();  // [N]
        for (int64_t r0 = 0; r0 < N; r0 += rows) {
            const int64_t m  = std::min(rows, N - r0);
            at::Tensor    xc = x2.narrow(0, r0, m);
            at::Tensor    ls = at::log_softmax(at::linear(xc, head), 1);  // [m, V]
            at::Tensor    tc = t1.narrow(0, r0, m);
            at::Tensor    dls =
                at::nll_loss_backward(g.narrow(0, r0, m), ls, tc, {}, at::Reduction::None, -100,
                                      at::zeros({}, ls.options()));
            at::Tensor dlogits = at::_log_softmax_backward_data(dls, ls, 1, ls.scalar_type());
            if (want_x) dx.narrow(0, r0, m).copy_(dlogits.mm(head));
            if (want_head) dhead.add_(dlogits.t().mm(xc));
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
    return ChunkedHeadLoss::apply(x.reshape({B * n, C}), head, targets.reshape({B * n}), rows)
        .view({B, n});
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
