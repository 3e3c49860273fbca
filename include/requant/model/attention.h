#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>

// Exact causal grouped-query attention in blocks of query positions, so that the scores of all
// heads and all positions, [B, H, T, T], are never held at once — neither in the forward pass
// nor in the backward pass, which recomputes each block's probabilities from the saved q, k, v
// (the flash-attention backward, without its online softmax: each block's row softmax is
// complete, so the result is the plain softmax, deterministic for a given block size), unless
// they are small enough to keep (kAttentionKeepProbsBytes).
// Legend: B batch, H query heads, Hkv key/value heads (H % Hkv == 0), T positions, D head_dim.

namespace rq::model {

// The scores one block may hold: query rows per block = this / (B * H * T), at least 16.
// About 64 MiB in fp32.
constexpr int64_t kAttentionBlockElems = int64_t(1) << 24;
// At most this many query positions per block: smaller blocks skip more of the masked scores
// and keep a block's scores in cache (bench_attention: at 16 x 256, 8 heads, blocks of 64
// positions take about 0.6x the time of one block).
constexpr int64_t kAttentionBlockPositions = 64;
// Query positions per block for this shape (what causal_attention uses when block = 0).
int64_t attention_block(int64_t B, int64_t H, int64_t T);
// A call that records a graph keeps every block's probabilities for its backward, instead of
// recomputing them (one GEMM and one softmax per block), when all of them take at most this:
// short sequences, where they cost little memory next to the layer's other saved tensors.
constexpr int64_t kAttentionKeepProbsBytes = int64_t(32) << 20;
// The bytes of probabilities such a call keeps in fp32 (0 above kAttentionKeepProbsBytes), for
// the memory plan: sum over blocks of B * H * n * t1 * 4.
int64_t attention_kept_bytes(int64_t B, int64_t H, int64_t T);

// softmax(q k^T / sqrt(D) + causal mask) v, query head h attending to key/value head h / (H/Hkv).
// q: [B, H, T, D], k and v: [B, Hkv, T, D] -> [B, T, H, D] (contiguous: the input of o_proj).
// Differentiable in q, k and v, with a hand-written backward. block: query positions per block
// (0: attention_block(B, H, T)); a block computes only the keys its queries can see, so more
// blocks skip more of the masked scores. The softmax and its backward are causal_softmax_*.
// keep_bytes: the most the probabilities kept for backward may take (kAttentionKeepProbsBytes;
// 0 recomputes them always). Kept or recomputed, the results are the same bit for bit.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t block = 0, int64_t keep_bytes = kAttentionKeepProbsBytes);
// The plain twin: materialises the [B, H, T, T] scores, ATen's softmax; gradients by autograd.
// -> [B, T, H, D] (a view).
at::Tensor causal_attention_ref(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// The fused softmax of one block, in place. s: contiguous [G, R*n, t0+n], the raw scores q.k of
// query positions [t0, t0+n), R rows per position (row i is position t0 + i/R). Becomes
// p = softmax(scale * s) over keys j <= position, and 0 for j > position. fp32 or fp64; each
// row is one pass in one thread, so the result does not depend on the thread count.
void causal_softmax_(at::Tensor& s, int64_t t0, int64_t R, double scale);
// Its backward, in place of dp: the gradient of the raw scores, scale * p * (dp - sum(p * dp)).
void causal_softmax_backward_(at::Tensor& dp, const at::Tensor& p, int64_t t0, int64_t R,
                              double scale);
// The plain twin of causal_softmax_: mask, then ATen's softmax (differentiable).
at::Tensor causal_softmax_ref(const at::Tensor& s, int64_t t0, int64_t R, double scale);

}  // namespace rq::model
