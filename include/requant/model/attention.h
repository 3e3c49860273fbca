#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>

// Exact causal grouped-query attention in blocks of query positions, so that the scores of all
// heads and all positions, [B, H, T, T], are never held at once — neither in the forward pass
// nor in the backward pass, which recomputes each block's probabilities from the saved q, k, v
// (the flash-attention backward, without its online softmax: each block's row softmax is
// complete, so the result is the plain softmax, deterministic for a given block size).
// Legend: B batch, H query heads, Hkv key/value heads (H % Hkv == 0), T positions, D head_dim.

namespace rq::model {

// The scores one block may hold: query rows per block = this / (B * H * T), at least 16.
// About 64 MiB in fp32; at T <= 512 with 32 heads and one sequence, one block.
constexpr int64_t kAttentionBlockElems = int64_t(1) << 24;
// Query positions per block for this shape (what causal_attention uses when block = 0).
int64_t attention_block(int64_t B, int64_t H, int64_t T);

// softmax(q k^T / sqrt(D) + causal mask) v, query head h attending to key/value head h / (H/Hkv).
// q: [B, H, T, D], k and v: [B, Hkv, T, D] -> [B, H, T, D]. Differentiable in q, k and v.
// block: query positions per block (0: attention_block(B, H, T)). With one block the forward
// and backward are the same operations, in the same order, as causal_attention_ref's autograd.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t block = 0);
// The plain twin: materialises the [B, H, T, T] scores; gradients by autograd.
at::Tensor causal_attention_ref(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

}  // namespace rq::model
