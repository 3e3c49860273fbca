// Llama decoder forward/backward in libtorch, fp32 (or fp64 for gradient checks) on CPU
// (requant/model/llama.h). Follows Hugging Face's LlamaForCausalLM operation by operation, so
// the reference logits are reproduced to fp32 rounding.
// Legend: B batch, T sequence, C n_embd, H n_head, Hkv n_head_kv, R = H/Hkv, D head_dim,
// F n_ff, V vocab.
#include "requant/model/llama.h"

#include <ATen/ATen.h>
#include <ATen/core/Reduction.h>
#include <ATen/record_function.h>

#include <cmath>
#include <limits>

#include "requant/error.h"
#include "requant/model/attention.h"
#include "requant/model/head_loss.h"
#include "requant/model/profile_scopes.h"

namespace rq::model {

LinearInput linear_input(Linear l) {
    switch (l) {
        case Linear::Q:
        case Linear::K:
        case Linear::V:
            return LinearInput::Attn;
        case Linear::O:
            return LinearInput::AttnOut;
        case Linear::Gate:
        case Linear::Up:
            return LinearInput::Mlp;
        case Linear::Down:
            return LinearInput::MlpOut;
    }
    return LinearInput::Attn;
}

at::Tensor attention(const at::Tensor& x, const LayerWeights& w, const LlamaConfig& c,
                     const RopeTables& rope, LinearObserver* obs, int64_t layer) {
    if (obs) obs->observe(layer, LinearInput::Attn, x);
    const int64_t B = x.size(0), T = x.size(1), H = c.n_head, Hkv = c.n_head_kv, D = c.head_dim;
    at::Tensor    q = at::linear(x, w.wq).view({B, T, H, D}).transpose(1, 2);    // [B, H, T, D]
    at::Tensor    k = at::linear(x, w.wk).view({B, T, Hkv, D}).transpose(1, 2);  // [B, Hkv, T, D]
    at::Tensor    v = at::linear(x, w.wv).view({B, T, Hkv, D}).transpose(1, 2);  // [B, Hkv, T, D]
    q               = apply_rope(q, rope);
    k               = apply_rope(k, rope);
    at::Tensor oc   = causal_attention(q, k, v).view({B, T, H * D});
    if (obs) obs->observe(layer, LinearInput::AttnOut, oc);
    return at::linear(oc, w.wo);
}

at::Tensor mlp(const at::Tensor& x, const LayerWeights& w, LinearObserver* obs, int64_t layer) {
    if (obs) obs->observe(layer, LinearInput::Mlp, x);
    const at::Tensor g = at::linear(x, w.w_gate), u = at::linear(x, w.w_up);  // [B, T, F]
    const at::Tensor h = swiglu(g, u);
    if (obs) obs->observe(layer, LinearInput::MlpOut, h);
    return at::linear(h, w.w_down);
}

at::Tensor decoder_layer(const at::Tensor& x, const LayerWeights& w, const LlamaConfig& c,
                         const RopeTables& rope, LinearObserver* obs, int64_t layer) {
    at::Tensor h = x + attention(rms_norm(x, w.attn_norm, c.rms_norm_eps), w, c, rope, obs, layer);
    return h + mlp(rms_norm(h, w.ffn_norm, c.rms_norm_eps), w, obs, layer);
}

at::Tensor embed(const at::Tensor& tokens, const at::Tensor& tok_embd) {
    RECORD_USER_SCOPE(kScopeEmbed);
    return at::embedding(tok_embd, tokens);
}

at::Tensor lm_logits(const at::Tensor& x, const at::Tensor& out_norm, const at::Tensor& head,
                     double eps) {
    return at::linear(rms_norm(x, out_norm, eps), head);
}

at::Tensor prediction_losses(const at::Tensor& logits, const at::Tensor& targets) {
    const int64_t B = logits.size(0), n = logits.size(1), V = logits.size(2);
    return at::cross_entropy_loss(logits.reshape({B * n, V}), targets.reshape({B * n}), {},
                                  at::Reduction::None)
        .view({B, n});
}

at::Tensor next_token_losses(const at::Tensor& logits, const at::Tensor& tokens) {
    const int64_t T = logits.size(1);
    return prediction_losses(logits.narrow(1, 0, T - 1), tokens.narrow(1, 1, T - 1));
}

Stage::Stage(LlamaConfig config, StageWeights weights, int64_t max_seq_len)
    : config_(std::move(config)), weights_(std::move(weights)) {
    const at::Tensor& any = weights_.range.first      ? weights_.tok_embd
                            : weights_.layers.empty() ? weights_.out_norm
                                                      : weights_.layers[0].wq;
    rope_                 = rope_tables(config_, max_seq_len, any.scalar_type());
}

at::ScalarType Stage::dtype() const {
    return rope_.cos.scalar_type();
}

at::Tensor Stage::hidden(const at::Tensor& in, StageTape* tape, bool keep_graph) const {
    const int64_t T = in.size(1);
    if (T > rope_.cos.size(0))
        throw ConfigError("sequence length " + std::to_string(T) + " exceeds the stage's " +
                          std::to_string(rope_.cos.size(0)) + " positions");
    at::Tensor x;
    if (weights_.range.first) {
        if (in.scalar_type() != at::kLong || in.dim() != 2)
            throw ShapeError("first stage expects int64 token ids [B, T]");
        x = embed(in, weights_.tok_embd);
    } else {
        if (in.dim() != 3 || in.size(2) != config_.n_embd)
            throw ShapeError("stage expects activations [B, T, " + std::to_string(config_.n_embd) +
                             "]");
        x = in;
    }
    const int64_t lo = keep_graph && weights_.range.first ? first_layer_with_grads() : 0;
    for (std::size_t i = 0; i < weights_.layers.size(); ++i) {
        const bool graph = keep_graph && int64_t(i) >= lo;
        // Kept graph: the layer's own graph from its detached input, as backward()'s replay
        // builds it; below lo nothing needs a gradient and nothing is kept. Otherwise the
        // caller's grad mode (forward() under autograd, forward_recorded() without).
        at::AutoGradMode grad_mode(keep_graph ? graph : at::GradMode::is_enabled());
        if (graph) x = x.detach().requires_grad_(needs_input_grad(int64_t(i), lo));
        if (tape) tape->layer_in.push_back(x);
        x = decoder_layer(x, weights_.layers[i], config_, rope_, observer_,
                          weights_.range.layer_begin + int64_t(i));
        if (tape && keep_graph) tape->layer_out.push_back(graph ? x : at::Tensor());
        if (graph) x = x.detach();
    }
    if (tape && weights_.range.last) tape->hidden = x;
    return x;
}

at::Tensor Stage::forward_layer(int64_t layer, const at::Tensor& x) const {
    const int64_t i = layer - weights_.range.layer_begin;
    if (i < 0 || i >= int64_t(weights_.layers.size()))
        throw ConfigError("layer " + std::to_string(layer) + " is not in this stage");
    return decoder_layer(x, weights_.layers[std::size_t(i)], config_, rope_, observer_, layer);
}

at::Tensor Stage::embed_tokens(const at::Tensor& tokens) const {
    if (!weights_.range.first) throw ConfigError("embed_tokens needs the first stage");
    return embed(tokens, weights_.tok_embd);
}

at::Tensor Stage::losses(const at::Tensor& x, const at::Tensor& tokens) const {
    const int64_t T = x.size(1);
    // Position T-1 predicts nothing: leave it out of the head.
    const at::Tensor xn = rms_norm(x.narrow(1, 0, T - 1), weights_.out_norm, config_.rms_norm_eps);
    return head_losses(xn, weights_.head, tokens.narrow(1, 1, T - 1));  // [B, T-1]
}

at::Tensor Stage::forward(const at::Tensor& in, const at::Tensor& tokens) const {
    at::Tensor x = hidden(in);
    return weights_.range.last ? losses(x, tokens) : x;
}

at::Tensor Stage::forward_recorded(const at::Tensor& in, const at::Tensor& tokens, StageTape& tape,
                                   bool keep_graph) const {
    at::NoGradGuard no_grad;
    tape        = {};
    tape.tokens = tokens;
    // Nothing to keep where backward() has no work: a first stage without weight gradients.
    keep_graph   = keep_graph && !(weights_.range.first &&
                                 first_layer_with_grads() == int64_t(weights_.layers.size()));
    at::Tensor x = hidden(in, &tape, keep_graph);
    if (!weights_.range.last) return x;
    if (!keep_graph) return losses(x, tokens);
    at::AutoGradMode grad_mode(true);
    tape.hidden = x.detach().requires_grad_(true);
    tape.losses = losses(tape.hidden, tokens);
    return tape.losses.detach();
}

int64_t Stage::first_layer_with_grads() const {
    for (std::size_t i = 0; i < weights_.layers.size(); ++i)
        for (Linear l : kLinears)
            if (weights_.layers[i].linear(l).requires_grad()) return int64_t(i);
    return int64_t(weights_.layers.size());
}

at::Tensor Stage::backward(const StageTape& tape, const at::Tensor& grad_output) const {
    const int64_t n = int64_t(weights_.layers.size());
    // The first stage needs no input gradient: layers below the first with weight gradients
    // need no backward at all.
    const int64_t lo = weights_.range.first ? first_layer_with_grads() : 0;
    if (lo == n) return {};
    if (tape.kept()) return backward_kept(tape, grad_output, lo);
    at::Tensor g = grad_output;
    if (weights_.range.last) {
        at::Tensor x = tape.hidden.detach().requires_grad_(true);
        at::Tensor l = losses(x, tape.tokens);
        l.backward(g.dim() == 0 ? g.to(l.scalar_type()).expand_as(l) : g);
        g = x.grad();
    }
    for (int64_t i = n - 1; i >= lo; --i) {
        const bool need_in = needs_input_grad(i, lo);
        at::Tensor x       = tape.layer_in[std::size_t(i)].detach().requires_grad_(need_in);
        at::Tensor y = decoder_layer(x, weights_.layers[std::size_t(i)], config_, rope_, nullptr,
                                     weights_.range.layer_begin + i);
        y.backward(g);
        g = need_in ? x.grad() : at::Tensor();
    }
    return weights_.range.first ? at::Tensor() : g;
}

// backward() over the graphs forward_recorded kept: the replay's backward calls, in its order.
at::Tensor Stage::backward_kept(const StageTape& tape, const at::Tensor& grad_output,
                                int64_t lo) const {
    at::Tensor g = grad_output;
    if (weights_.range.last) {
        const at::Tensor& l = tape.losses;
        l.backward(g.dim() == 0 ? g.to(l.scalar_type()).expand_as(l) : g);
        g = tape.hidden.grad();
    }
    for (int64_t i = int64_t(weights_.layers.size()) - 1; i >= lo; --i) {
        tape.layer_out[std::size_t(i)].backward(g);
        g = needs_input_grad(i, lo) ? tape.layer_in[std::size_t(i)].grad() : at::Tensor();
    }
    return weights_.range.first ? at::Tensor() : g;
}

at::Tensor Stage::forward_logits(const at::Tensor& in) const {
    if (!weights_.range.last) throw ConfigError("forward_logits needs the last stage");
    return lm_logits(hidden(in), weights_.out_norm, weights_.head, config_.rms_norm_eps);
}

at::Tensor stage_backward(const at::Tensor& input, const at::Tensor& output,
                          const at::Tensor& grad_output) {
    if (!output.requires_grad()) return {};  // nothing in this stage needs a gradient
    at::Tensor g = grad_output.dim() == 0 ? grad_output.to(output.scalar_type()).expand_as(output)
                                          : grad_output;
    output.backward(g);
    if (input.is_floating_point() && input.requires_grad()) return input.grad();
    return {};
}

}  // namespace rq::model
