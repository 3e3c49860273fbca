#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>

// The LM head and its cross-entropy in chunks of positions, so that the logits over the whole
// vocabulary ([B*n, V]: 2 GiB for 4096 positions of a 128 256-token vocabulary) are never held
// at once — in the forward pass nor in the backward pass, which recomputes each chunk's logits.
// Legend: B batch, n predicted positions, C n_embd, V vocab.

namespace rq::model {

// The logits one chunk may hold: rows per chunk = this / V, at least 1. 256 MiB in fp32; at
// V = 32 000 and up to 2 097 rows, one chunk.
constexpr int64_t kLossChunkElems = int64_t(1) << 26;
int64_t           loss_chunk_rows(int64_t V);

// Cross-entropy of each position: x [B, n, C] (the normalised final hidden state) through
// head [V, C] against targets int64 [B, n] -> [B, n]. Differentiable in x and head.
// rows: positions per chunk (0: loss_chunk_rows(V)). With one chunk, the same operations in
// the same order as head_losses_ref's autograd.
at::Tensor head_losses(const at::Tensor& x, const at::Tensor& head, const at::Tensor& targets,
                       int64_t rows = 0);
// The plain twin: materialises [B, n, V] logits; gradients by autograd.
at::Tensor head_losses_ref(const at::Tensor& x, const at::Tensor& head, const at::Tensor& targets);

}  // namespace rq::model
