#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/dist/transport.h"
#include "requant/model/llama.h"

// The Post-quantization Integral (Hu et al., 2025) across the pipeline:
//   PQI_i = (w~_i - w_i) * integral_0^1 dF/dw_i (w + t (w~ - w)) dt,
// with every linear of every layer moving along the straight path together, so each quadrature
// node is one full-model forward+backward (1F1B) over the calibration set, the same sequences at
// every node. sum_i PQI_i ~ F(w~) - F(w): the self-test. Each rank holds gradient accumulators
// for its own layers only.

namespace rq::sensitivity {

using LinearSet = std::vector<std::array<at::Tensor, 7>>;  // [layer of the stage][kLinears]

struct Quadrature {
    std::vector<double> t;       // nodes in [0, 1]
    std::vector<double> weight;  // sum to 1
};
// rule: left | right | midpoint | trapezoid, with n intervals (trapezoid: n + 1 nodes).
Quadrature quadrature(const std::string& rule, int n);

struct PqiResult {
    LinearSet pqi;              // float [O, I] per linear of this rank's layers
    double    pqi_sum     = 0;  // over every weight of every rank (fp64)
    double    f_orig      = 0;  // F(w) on the calibration tokens
    double    f_quant     = 0;  // F(w~)
    double    first_order = 0;  // g^T (w~ - w), g = grad F(w): the first-order Taylor estimate
    double    delta_f() const { return f_quant - f_orig; }
};

// `stage` holds w on entry and on return. w_quant: this rank's w~ (same shapes as the stage's
// linears). Collective: every rank calls it with its own stage. on_node(k) after each node.
PqiResult compute_pqi(model::Stage& stage, dist::Transport& t, const LinearSet& w_quant,
                      const at::Tensor& tokens, int64_t microbatch, const Quadrature& q,
                      const std::function<void(int)>& on_node = {});

}  // namespace rq::sensitivity
