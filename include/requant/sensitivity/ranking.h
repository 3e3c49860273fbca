#pragma once
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/parallel/transport.h"

// Order statistics of values spread over the ranks by decoder layer (per-weight PQI, say),
// without gathering them: the k-th largest value is found by bisection on the 32-bit order key
// of float, each step one allreduce of per-layer counts (32 steps, exact). Each rank sorts its
// own layers once; counts and sums come from binary search and prefix sums per layer, so every
// result is the same for every number of ranks. Used for the share of the total held by the top
// weights (the sensitivity study) and for global top-k selection (ReQuant). L n_layer.

namespace rq::sensitivity {

class LayerRanking {
  public:
    // values[il]: any float tensor of this rank's layer layer_begin + il (all of its linears,
    // flattened and concatenated); each is released once its keys are made (pass the vector
    // moved to free them). NaN is an error. Not collective. Without sums (counts and order
    // statistics only) the ranking holds 4 bytes per value instead of 12; sum_largest and
    // sum_all then throw InternalError.
    LayerRanking(std::vector<at::Tensor> values, int64_t layer_begin, int64_t n_layer,
                 bool with_sums = true);

    // Collective (every rank, same order). k in [1, size()].
    int64_t size(parallel::Transport& t) const;  // values on every rank
    float   kth_largest(parallel::Transport& t, int64_t k) const;
    double  sum_largest(parallel::Transport& t, int64_t k) const;  // the k largest, summed
    double  sum_all(parallel::Transport& t) const;
    // Per layer, over every rank: how many values are >= v (strict: > v). double [L].
    at::Tensor layer_counts(parallel::Transport& t, float v, bool strict) const;

  private:
    // Per layer of this rank, descending: order keys, and prefix sums of the values (fp64).
    std::vector<std::vector<uint32_t>> keys_;
    std::vector<std::vector<double>>   prefix_;
    int64_t                            layer_begin_, n_layer_;
    bool                               with_sums_;

    // Per-layer counts of values with key >= k (or > k) and their sums, over every rank.
    at::Tensor count_at_least(parallel::Transport& t, uint32_t key, bool strict) const;
};

// The order key of a float: unsigned comparison of keys orders the floats (-0 < +0).
uint32_t float_key(float v);
float    key_float(uint32_t k);

}  // namespace rq::sensitivity
