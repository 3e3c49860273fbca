#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/dist/transport.h"
#include "requant/sensitivity/path.h"

// Which weights go to the sparse parts. Alg. 2's round of step-wise significant-weight detach
// picks the top weights by a per-weight score (PQI) among those not yet sparse, either over the
// whole model (scope "global": one threshold across every rank, found by distributed bisection,
// ties to the lower (layer, linear, row, column)) or within each linear (scope "linear": the
// same fraction of each). Random selection (the ablation) draws uniformly among the free
// weights with a seed per (layer, linear, round). Every result is the same for every number of
// ranks. O out_features, I in_features.

namespace rq::requant {

using Masks     = std::vector<std::array<at::Tensor, 7>>;  // [stage layer][kLinears] bool [O, I]
using LinearSet = sensitivity::LinearSet;                  // [stage layer][kLinears] float [O, I]

struct SelectOptions {
    std::string scope          = "global";  // global | linear
    bool        signed_ranking = true;      // rank by the signed score (false: by |score|)
};

// The top `fraction` of all linear weights by score (global: fraction of every weight of the
// model, linear: round(fraction * numel) of each linear), excluding `taken` (undefined entries
// = nothing taken). Collective over `t` for the global scope. layer_begin / n_layer place this
// rank's layers in the model.
Masks select_top(dist::Transport& t, const LinearSet& score, const Masks& taken, double fraction,
                 const SelectOptions& opt, int64_t layer_begin, int64_t n_layer);

// round(fraction * numel) weights of each linear at random among those not `taken`.
Masks select_random(const Masks& like, const Masks& taken, double fraction, int64_t layer_begin,
                    uint64_t seed);

// a | b elementwise per linear (undefined = all false).
Masks   masks_or(const Masks& a, const Masks& b);
int64_t masks_count(const Masks& m);  // set entries, this rank

}  // namespace rq::requant
