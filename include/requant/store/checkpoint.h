#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "requant/decompose/layer.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/quant/decomposed.h"

// The final checkpoint OUT/model.requant.h5 (DESIGN.md §4), its summary (`inspect`) and the
// dequantized HF export (`export`). Layout:
//   /                 attributes: format, method, bits, group_size, n_layer, bits_per_weight,
//                     bits_per_weight_paper, memory_gib, linear_weights, outliers, significant,
//                     source_model, run (fingerprint), config_json (the model's config.json)
//   /layers/NNN/<linear>/...   one decoder layer as in the layer state (pipeline/state.h)
//   /layers/NNN/errors         double [7, 6]: each linear's quantize-time errors (state.h)
//   /tensors/<HF name>         every other tensor (embeddings, norms, head): float32 when the
//                              model stores bf16 (exact), else as stored
//   /tokenizer/<file name>     the model folder's tokenizer files, byte for byte (uint8)
//   /folded/<HF norm name>     AWQ only: each layer's two RMSNorm weights with the input scale
//                              of the linears they feed folded in (float32: norm / in_scale of
//                              q/k/v, of gate/up). A deployed model takes these norms and every
//                              linear's codes as they are, ignoring in_scale and out_scale (which
//                              then cancel: quant/quantized.h); the sparse parts, stored in the
//                              original basis, are multiplied by in_scale per column and divided
//                              by out_scale per row. `export` and requant-dist itself use the
//                              original basis (/tensors and dequant with both scales).
//   /qtip                      QTIP only, what its linears share: lut (fp16 [512, 2], HYB's
//                              table), factors/<m> (float64 [m, m]); root attributes qtip_code,
//                              qtip_K, qtip_L, qtip_V, qtip_tile, qtip_factor_seed and
//                              qtip_weight (the reconstruction formula)
// It holds no timestamps: the same run gives the same bytes, resumed or not.

namespace rq::store {

// Storage of one layer's linears (quant/decomposed.h).
quant::StorageBits storage_bits(const decompose::LayerQuant& q);
// Bits a model stores once for all its linears, from one layer's (all layers have the same
// shapes): QTIP's HYB table and Kronecker factors (quant/qtip.h); 0 for the other methods.
double shared_storage_bits(const decompose::LayerQuant& q);

std::string final_checkpoint_path(const std::string& out);  // OUT/model.requant.h5

// Rank 0, after every layer file of the run is written: gathers them into model.requant.h5
// (atomically). `root` is merged into the root attributes (numbers and strings).
void write_final_checkpoint(const std::string& out, int64_t n_layer, const io::HfCheckpoint& src,
                            const std::string& run_fp, const nlohmann::json& root);

// A linear's quantize-time errors as JSON (null where not computable).
nlohmann::json errors_json(const decompose::LinearErrors& e);

// `requant-dist inspect`: the root attributes and per layer and linear the bits (dense and
// sparse), memory, sparse counts and, when the checkpoint holds them, the quantize-time errors.
// Throws FormatError for a file that is not a requant-dist checkpoint.
nlohmann::json inspect_checkpoint(const std::string& path);
std::string    format_inspection(const nlohmann::json& summary);

// `requant-dist export`: a Hugging Face model folder (config.json, the tokenizer files, and the
// weights in `dtype` = f32 | bf16 | f16) with W_hat in place of every quantized linear. The
// weights go to shards of at most `max_shard_bytes` (a larger tensor is a shard alone), written
// one at a time (memory: one shard and one layer's parts): model.safetensors when one shard
// holds them all, else model-NNNNN-of-NNNNN.safetensors and model.safetensors.index.json, as
// the HF loaders expect. Model files an earlier export left in `out_dir` are replaced. `from`
// is a run directory or a model.requant.h5.
void export_hf(const std::string& from, const std::string& out_dir, const std::string& dtype,
               int64_t max_shard_bytes = 5'000'000'000);

}  // namespace rq::store
