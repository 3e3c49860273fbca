#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/io/job.h"
#include "requant/model/weights.h"
#include "requant/parallel/transport.h"
#include "requant/sensitivity/path.h"

// Which weights go to the sparse parts. Alg. 2's round of step-wise significant-weight detach
// picks the top weights by a per-weight score (PQI) among those not yet sparse, either over the
// whole model (scope "global": one threshold across every rank, found by distributed bisection,
// ties to the lower (layer, linear, row, column)) or within each linear (scope "linear": the
// same fraction of each). Random selection (the ablation) draws uniformly among the free
// weights with a seed per (layer, linear, round). Every result is the same for every number of
// ranks. O out_features, I in_features.

namespace rq::decompose {

struct SelectOptions {
    io::SelectScope scope          = io::SelectScope::Global;
    bool            signed_ranking = true;  // rank by the signed score (false: by |score|)
};

// The top `fraction` of all linear weights by score (global: fraction of every weight of the
// model, linear: round(fraction * numel) of each linear), excluding `taken` (undefined entries
// = nothing taken). Collective over `t` for the global scope. layer_begin / n_layer place this
// rank's layers in the model.
model::StageTensors select_top(parallel::Transport& t, const model::StageTensors& score,
                               const model::StageTensors& taken, double fraction,
                               const SelectOptions& opt, int64_t layer_begin, int64_t n_layer);

// round(fraction * numel) weights of each linear at random among those not `taken`.
model::StageTensors select_random(const model::StageTensors& like, const model::StageTensors& taken,
                                  double fraction, int64_t layer_begin, uint64_t seed);

// a | b elementwise per linear (undefined = all false).
model::StageTensors masks_or(const model::StageTensors& a, const model::StageTensors& b);
int64_t             masks_count(const model::StageTensors& m);  // set entries, this rank

}  // namespace rq::decompose
