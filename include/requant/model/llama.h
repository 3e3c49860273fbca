#pragma once
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/model/block_ops.h"  // rms_norm, swiglu
#include "requant/model/rope.h"
#include "requant/model/weights.h"

// The Llama decoder as plain functions of (weights, activations), and a pipeline Stage that runs
// a slice of it forward and backward on its own. Autograd records the graph whenever a weight
// or the stage input requires gradients; nothing here knows about ranks or transports.
// Legend: B batch, T sequence, C n_embd, H n_head, Hkv n_head_kv, D head_dim, F n_ff, V vocab.

namespace rq::model {

// The four distinct inputs of a layer's linears: q/k/v share one, gate/up share one.
enum class LinearInput { Attn, AttnOut, Mlp, MlpOut };
LinearInput linear_input(Linear l);

// Sees the input of every linear of a stage's layers during forward, for quantizer statistics
// (X^T X, activation magnitudes). x: [B, T, in_features]; absolute layer index.
class LinearObserver {
  public:
    virtual ~LinearObserver()                                                   = default;
    virtual void observe(int64_t layer, LinearInput which, const at::Tensor& x) = 0;
};

// The layer's parts, x [B, T, C] -> [B, T, C]. `obs`, when given, sees the input of every
// linear (as layer `layer`).
at::Tensor attention(const at::Tensor& x, const LayerWeights& w, const LlamaConfig& c,
                     const RopeTables& rope, LinearObserver* obs = nullptr, int64_t layer = 0);
at::Tensor mlp(const at::Tensor& x, const LayerWeights& w, LinearObserver* obs = nullptr,
               int64_t layer = 0);
at::Tensor decoder_layer(const at::Tensor& x, const LayerWeights& w, const LlamaConfig& c,
                         const RopeTables& rope, LinearObserver* obs = nullptr, int64_t layer = 0);
at::Tensor embed(const at::Tensor& tokens,
                 const at::Tensor& tok_embd);  // int64 [B, T] -> [B, T, C]
at::Tensor lm_logits(const at::Tensor& x, const at::Tensor& out_norm, const at::Tensor& head,
                     double eps);  // [B, T, V]
// Cross-entropy of each prediction: logits [B, n, V] against targets int64 [B, n] -> [B, n].
at::Tensor prediction_losses(const at::Tensor& logits, const at::Tensor& targets);
// Next-token cross-entropy per predicted position: logits [B, T, V], tokens [B, T] -> [B, T-1]
// (position t predicts token t+1; the loss F is the mean over every entry).
at::Tensor next_token_losses(const at::Tensor& logits, const at::Tensor& tokens);

// What Stage::forward_recorded keeps of one microbatch for Stage::backward: the input of each
// of the stage's layers and the last layer's output, [B, T, C] each. Recomputing (the default),
// nothing inside a layer: backward replays each layer. Keeping the graph, also each layer's
// output with its autograd graph (the layer's saved internals) and the losses with theirs, so
// that backward runs no forward again.
struct StageTape {
    at::Tensor              tokens;     // int64 [B, T]
    std::vector<at::Tensor> layer_in;   // per stage layer: its input
    at::Tensor              hidden;     // the last layer's output (the head's input on the last)
    std::vector<at::Tensor> layer_out;  // kept graph: per stage layer, its output; else empty
    at::Tensor              losses;     // kept graph, last stage: [B, T-1] with its graph
    bool                    kept() const { return !layer_out.empty() || losses.defined(); }
};

// One pipeline stage. forward() takes token ids (first stage) or boundary activations, and
// returns boundary activations or, on the last stage, per-position losses [B, T-1].
class Stage {
  public:
    Stage(LlamaConfig config, StageWeights weights, int64_t max_seq_len);

    const LlamaConfig&  config() const { return config_; }
    const StageRange&   range() const { return weights_.range; }
    StageWeights&       weights() { return weights_; }
    const StageWeights& weights() const { return weights_; }
    at::ScalarType      dtype() const;

    // in: int64 [B, T] tokens on the first stage, else [B, T, C]. tokens: int64 [B, T], needed
    // on the last stage (targets). Returns [B, T, C], or [B, T-1] losses on the last stage.
    at::Tensor forward(const at::Tensor& in, const at::Tensor& tokens) const;
    // forward() that records the microbatch's tape for backward(). Recomputing (keep_graph
    // false), without autograd: backward() replays one layer at a time (activation
    // recomputation, 2 forwards + 1 backward per pass); a microbatch in flight holds
    // (layers + 1) x [B, T, C], and one layer's internals exist only while it is replayed.
    // Keeping the graph, each layer runs with autograd on its own detached input, so backward()
    // only walks the graphs (1 forward + 1 backward): the same operations on the same values,
    // so the same gradients bit for bit, for each layer's saved internals in memory
    // (parallel/memory_plan.h, graph_per_micro).
    at::Tensor forward_recorded(const at::Tensor& in, const at::Tensor& tokens, StageTape& tape,
                                bool keep_graph = false) const;
    // grad_output: dF/d output ([B, T, C]), or on the last stage the weight of every loss (a
    // scalar or [B, T-1]). Weight gradients accumulate in the linears' .grad(); returns dF/d
    // input, or an undefined tensor on the first stage. The same gradients as stage_backward()
    // over forward()'s graph, in the same operations.
    at::Tensor backward(const StageTape& tape, const at::Tensor& grad_output) const;

    // Logits of the last stage, [B, T, V] (evaluation and reference checks).
    at::Tensor forward_logits(const at::Tensor& in) const;
    // One decoder layer of this stage (absolute index), for layer-by-layer (sequential)
    // quantization: x [B, T, C] -> [B, T, C].
    at::Tensor forward_layer(int64_t layer, const at::Tensor& x) const;
    // Embedding of the first stage: int64 [B, T] -> [B, T, C].
    at::Tensor embed_tokens(const at::Tensor& tokens) const;

    // Observer of linear inputs during forward (not owned; nullptr = none).
    void set_observer(LinearObserver* obs) { observer_ = obs; }

  private:
    // embedding (first) + this stage's layers; tape, when given, records each layer's input
    // (and with keep_graph its output with its graph, from the first layer with grads on)
    at::Tensor hidden(const at::Tensor& in, StageTape* tape = nullptr,
                      bool keep_graph = false) const;
    // Whether layer il's input needs a gradient in backward (first_layer_with_grads: lo)
    bool needs_input_grad(int64_t il, int64_t lo) const { return il > lo || !weights_.range.first; }
    at::Tensor losses(const at::Tensor& x, const at::Tensor& tokens) const;  // last stage
    int64_t    first_layer_with_grads() const;  // stage layer index; layers.size() if none
    at::Tensor backward_kept(const StageTape& tape, const at::Tensor& grad_output,
                             int64_t lo) const;

    LlamaConfig     config_;
    StageWeights    weights_;
    RopeTables      rope_;
    LinearObserver* observer_ = nullptr;
};

// Runs one stage's backward for one microbatch. `input` is what forward() received (set to
// require grad before forward() when it is a float activation), `output` what it returned,
// `grad_output` the gradient of F w.r.t. output (on the last stage: a scalar weight applied to
// the sum of the losses, e.g. 1/(number of predicted tokens)). Weight gradients accumulate in
// the linears' .grad(); returns dF/d input ([B, T, C]) or an undefined tensor on the first stage.
at::Tensor stage_backward(const at::Tensor& input, const at::Tensor& output,
                          const at::Tensor& grad_output);

}  // namespace rq::model
