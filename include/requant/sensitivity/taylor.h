#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/model/llama.h"
#include "requant/parallel/transport.h"
#include "requant/sensitivity/pqi.h"

// The estimates PQI is compared against (PAPER.md §1.2, Tables 1 and 2), across the pipeline:
//   first order  g^T dw,                     g = grad F(w), per (layer, linear);
//   second order 1/2 dw_l^T H_ll dw_l        per decoder layer l (the true, indefinite Hessian;
//                                            the paper's "All" row is the sum over layers), and
//                1/2 dw^T H dw               with every cross-layer block;
//   actual       F(w~_l) - F(w)              only layer l quantized, and F(w + lambda dw) - F(w).
// dw = w~ - w. Hessian terms are central differences of directional derivatives,
//   v^T H v ~ (v . g(w + eps v) - v . g(w - eps v)) / (2 eps),
// each two ordinary pipeline forward+backward passes (truncation O(eps^2)); run on an fp64
// stage (eps 1e-4) they agree with double backward (second_order_exact) to 3e-7 relative on
// stories260k (tests/mpi/test_sensitivity_mpi.cpp). L n_layer.

namespace rq::sensitivity {

struct TaylorOptions {
    std::vector<double> lambdas;  // path points of the lambda table, in (0, 1]
    double              hvp_eps = 1e-4;
};

struct TaylorResult {
    double              f_orig = 0;            // F(w)
    at::Tensor          first_order;           // double [L, 7]: g_l,i^T dw_l,i
    std::vector<double> layer_second;          // [L] 1/2 dw_l^T H_ll dw_l
    double              second_full = 0;       // 1/2 dw^T H dw, all blocks
    std::vector<double> layer_delta_f;         // [L] F(only layer l at w~) - F(w)
    double              delta_f = 0;           // F(w~) - F(w)
    std::vector<double> lambda_delta_f;        // per lambda: F(w + lambda dw) - F(w)
    double              first_total() const;   // sum of first_order, fixed order
    double              second_total() const;  // sum of layer_second (the paper's "All")
};

// Passes: one forward+backward at w, 2 (L + 1) for the Hessian terms, L + |lambdas| + 1
// forwards. `stage` holds w on entry and on return (any float dtype; fp64 recommended: the
// differences are of O(eps) quantities). Collective; the same result for every P.
// on_pass(done, total) before the first pass (done = 0) and after each.
TaylorResult taylor_study(model::Stage& stage, parallel::Transport& t,
                          const model::StageTensors& w_quant, const at::Tensor& tokens,
                          const parallel::ScheduleOptions& schedule, const TaylorOptions& opt,
                          const std::function<void(int, int)>& on_pass = {});

// 1/2 v^T H_ll v for v = dw restricted to decoder layer `layer`, by double backward through
// the whole model in one process (the stage must be the whole model): the reference the
// pipeline's central differences are tested against.
double second_order_exact(model::Stage& stage, const model::StageTensors& w_quant,
                          const at::Tensor& tokens, int64_t microbatch, int64_t layer);

}  // namespace rq::sensitivity
