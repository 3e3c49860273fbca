#pragma once
#include <cstdint>
#include <functional>

#include <ATen/core/Tensor.h>

#include "requant/model/llama.h"

// Single-process loss evaluation over token sequences: the mean next-token cross-entropy over
// positions 1..T-1 of every sequence. N sequences, T tokens each.

namespace rq::model {

struct EvalResult {
    double  loss_sum    = 0;  // sum of per-position losses, accumulated in double
    int64_t n_predicted = 0;  // N * (T - 1)
    int64_t n_seqs      = 0;
    double  mean_loss() const { return n_predicted ? loss_sum / n_predicted : 0.0; }
    double  perplexity() const;
};

// Throws ShapeError if a token id is outside [0, V).
void check_token_ids(const at::Tensor& tokens, int64_t n_vocab, const std::string& source);

// Evaluates a whole-model stage in batches of `batch` sequences; `on_batch(done_seqs)` is called
// after each batch (progress reporting). No autograd graph is built.
EvalResult evaluate(const Stage& model, const at::Tensor& tokens, int64_t batch,
                    const std::function<void(int64_t)>& on_batch = {});

}  // namespace rq::model
