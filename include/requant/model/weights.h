#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/io/hf_checkpoint.h"
#include "requant/io/hf_config.h"

// Weights of one pipeline stage of a Llama model: a contiguous slice of decoder layers, plus the
// token embedding on the first stage and the final norm and LM head on the last.
// Legend: V vocab, C n_embd, F n_ff, H n_head, Hkv n_head_kv, D head_dim.

namespace rq::model {

using io::LlamaConfig;

// The seven quantizable linears of a decoder layer, in HF order.
enum class Linear { Q, K, V, O, Gate, Up, Down };
constexpr std::size_t                     kNumLinears = 7;
constexpr std::array<Linear, kNumLinears> kLinears    = {
       Linear::Q, Linear::K, Linear::V, Linear::O, Linear::Gate, Linear::Up, Linear::Down};
const char* linear_name(Linear l);  // "q_proj", ... (HF module names)

// One tensor per linear of a decoder layer, in kLinears order: weights, masks, scores, ...
using LayerTensors = std::array<at::Tensor, kNumLinears>;
// One LayerTensors per decoder layer of a stage: [stage layer][kLinears].
using StageTensors = std::vector<LayerTensors>;

struct LayerWeights {
    at::Tensor attn_norm;  // [C]
    at::Tensor wq;         // [H*D, C]
    at::Tensor wk;         // [Hkv*D, C]
    at::Tensor wv;         // [Hkv*D, C]
    at::Tensor wo;         // [C, H*D]
    at::Tensor ffn_norm;   // [C]
    at::Tensor w_gate;     // [F, C]
    at::Tensor w_up;       // [F, C]
    at::Tensor w_down;     // [C, F]

    at::Tensor&       linear(Linear l);
    const at::Tensor& linear(Linear l) const;
};

// Which part of the model a stage holds. Layers [layer_begin, layer_end).
struct StageRange {
    int64_t layer_begin = 0;
    int64_t layer_end   = 0;
    bool    first       = true;  // owns the token embedding
    bool    last        = true;  // owns the final norm, LM head and the loss
};

StageRange whole_model(const LlamaConfig& c);

struct StageWeights {
    StageRange                range;
    at::Tensor                tok_embd;  // [V, C], first stage only
    std::vector<LayerWeights> layers;    // layer_end - layer_begin entries
    at::Tensor                out_norm;  // [C], last stage only
    at::Tensor                head;      // [V, C], last stage only (a copy of tok_embd if tied)
};

// HF tensor name of decoder layer `il`'s linear `l` ("model.layers.3.mlp.down_proj.weight").
std::string linear_tensor_name(int64_t il, Linear l);

// A decoder layer's RMSNorms: before attention (input_layernorm), before the MLP
// (post_attention_layernorm).
enum class LayerNorm { Attn, Ffn };
// HF tensor name of decoder layer `il`'s norm ("model.layers.3.input_layernorm.weight").
std::string norm_tensor_name(int64_t il, LayerNorm n);

// Loads exactly the tensors of `range`, checked against the config, converted to `dtype`.
// When the range is the whole model, a checkpoint tensor left unused is an error (it means the
// config and the weights disagree).
StageWeights load_stage_weights(const io::HfCheckpoint& ckpt, const StageRange& range,
                                at::ScalarType dtype);

// The linears of `range` as stored, without a copy: read-only views of the mapped shards
// (io::HfCheckpoint::view), valid while `ckpt` lives; BF16 in most released models.
StageTensors view_stage_linears(const io::HfCheckpoint& ckpt, const StageRange& range);

// Random weights with trained-model-like scales, for tests (deterministic in `seed`).
StageWeights random_stage_weights(const LlamaConfig& c, const StageRange& range,
                                  at::ScalarType dtype, uint64_t seed);

// Marks every linear weight of the stage as requiring gradients (and clears old gradients).
void enable_linear_grads(StageWeights& w);

}  // namespace rq::model
