#pragma once
#include <cstdint>
#include <string>

#include "requant/decompose/layer.h"
#include "requant/io/job.h"

// `requant-dist run --dump-layer L`: one decoder layer's quantization, inputs and outputs, in
// one HDF5 file, for checks against independent implementations (tests/reference/):
//   /            attributes layer, method, bits, group_size, damp, act_order, block_size,
//                static_groups, sequential, awq_grid, awq_samples, awq_loss, kmeans_iters,
//                kmeans_init; with the block inputs' rows also n_head, n_head_kv, head_dim
//   /<linear>/   weight float [O, I] (what the method was given), sparse uint8 [O, I] (the
//                weights stored apart, when any), fisher float [O, I] (SqueezeLLM) and
//                lut_init float [O, K] (its k-means++ start, NaN rows: exact), the dense
//                part as the method made it: codes uint8 [O, I] (unpacked), scales, zeros,
//                lut (float), g_idx int32, in_scale and out_scale float, where present;
//                w_hat float [O, I]
//                (the reconstruction: dense + sparse parts)
//   /inputs/<attn|attn_out|mlp|mlp_out>/   xtx float64 [I, I], abs_mean float [I],
//                samples float [n, I], rows float [N, T, I] (attn and mlp, AWQ's block loss):
//                what the methods reading that input were given
//   /rope/       cos, sin float [T, head_dim] (with rows): the attention block's RoPE tables
// <linear> is the HF module name (q_proj ... down_proj).

namespace rq::store {

void write_layer_dump(const std::string& path, int64_t layer, const io::JobQuant& quant,
                      const model::LayerTensors& w, const model::LayerTensors& sparse,
                      const decompose::LayerStats& stats, const decompose::LayerQuant& q);

}  // namespace rq::store
