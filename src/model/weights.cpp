// Stage weights: loading from HF checkpoints and random initialisation (requant/model/weights.h).
#include "requant/model/weights.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "requant/error.h"

namespace rq::model {

const char* linear_name(Linear l) {
    switch (l) {
        case Linear::Q:
            return "q_proj";
        case Linear::K:
            return "k_proj";
        case Linear::V:
            return "v_proj";
        case Linear::O:
            return "o_proj";
        case Linear::Gate:
            return "gate_proj";
        case Linear::Up:
            return "up_proj";
        case Linear::Down:
            return "down_proj";
    }
    return "?";
}

at::Tensor& LayerWeights::linear(Linear l) {
    switch (l) {
        case Linear::Q:
            return wq;
        case Linear::K:
            return wk;
        case Linear::V:
            return wv;
        case Linear::O:
            return wo;
        case Linear::Gate:
            return w_gate;
        case Linear::Up:
            return w_up;
        case Linear::Down:
            return w_down;
    }
    throw InternalError("bad Linear");
}
const at::Tensor& LayerWeights::linear(Linear l) const {
    return const_cast<LayerWeights*>(this)->linear(l);
}

StageRange whole_model(const LlamaConfig& c) {
    return {0, c.n_layer, true, true};
}

std::string linear_tensor_name(int64_t il, Linear l) {
    const bool attn = l == Linear::Q || l == Linear::K || l == Linear::V || l == Linear::O;
    return "model.layers." + std::to_string(il) + (attn ? ".self_attn." : ".mlp.") +
           linear_name(l) + ".weight";
}

std::string norm_tensor_name(int64_t il, LayerNorm n) {
    return "model.layers." + std::to_string(il) +
           (n == LayerNorm::Attn ? ".input_layernorm.weight" : ".post_attention_layernorm.weight");
}

namespace {

// Expected shape of each linear, [out, in].
std::vector<int64_t> linear_shape(const LlamaConfig& c, Linear l) {
    const int64_t q = c.n_head * c.head_dim, kv = c.n_head_kv * c.head_dim;
    switch (l) {
        case Linear::Q:
            return {q, c.n_embd};
        case Linear::K:
        case Linear::V:
            return {kv, c.n_embd};
        case Linear::O:
            return {c.n_embd, q};
        case Linear::Gate:
        case Linear::Up:
            return {c.n_ff, c.n_embd};
        case Linear::Down:
            return {c.n_embd, c.n_ff};
    }
    return {};
}

void check_range(const LlamaConfig& c, const StageRange& r) {
    if (r.layer_begin < 0 || r.layer_end > c.n_layer || r.layer_begin > r.layer_end)
        throw ConfigError("stage layers [" + std::to_string(r.layer_begin) + ", " +
                          std::to_string(r.layer_end) + ") are outside the model's " +
                          std::to_string(c.n_layer) + " layers");
}

}  // namespace

StageTensors view_stage_linears(const io::HfCheckpoint& ckpt, const StageRange& range) {
    const LlamaConfig& c = ckpt.config();
    check_range(c, range);
    StageTensors out;
    for (int64_t il = range.layer_begin; il < range.layer_end; ++il) {
        LayerTensors lt;
        for (std::size_t i = 0; i < kNumLinears; ++i)
            lt[i] = ckpt.view(linear_tensor_name(il, kLinears[i]), linear_shape(c, kLinears[i]));
        out.push_back(std::move(lt));
    }
    return out;
}

StageWeights load_stage_weights(const io::HfCheckpoint& ckpt, const StageRange& range,
                                at::ScalarType dtype) {
    const LlamaConfig& c = ckpt.config();
    check_range(c, range);
    StageWeights w;
    w.range                       = range;
    const std::vector<int64_t> vc = {c.n_vocab, c.n_embd};
    if (range.first) w.tok_embd = ckpt.load("model.embed_tokens.weight", vc, dtype);
    for (int64_t il = range.layer_begin; il < range.layer_end; ++il) {
        LayerWeights lw;
        lw.attn_norm = ckpt.load(norm_tensor_name(il, LayerNorm::Attn), {c.n_embd}, dtype);
        lw.ffn_norm  = ckpt.load(norm_tensor_name(il, LayerNorm::Ffn), {c.n_embd}, dtype);
        for (Linear l : kLinears)
            lw.linear(l) = ckpt.load(linear_tensor_name(il, l), linear_shape(c, l), dtype);
        w.layers.push_back(std::move(lw));
    }
    if (range.last) {
        w.out_norm = ckpt.load("model.norm.weight", {c.n_embd}, dtype);
        if (c.tie_word_embeddings) {
            if (ckpt.contains("lm_head.weight"))
                throw ShapeError(ckpt.dir() +
                                 ": tie_word_embeddings is true but the checkpoint "
                                 "has its own 'lm_head.weight'");
            w.head = range.first ? w.tok_embd : ckpt.load("model.embed_tokens.weight", vc, dtype);
        } else {
            w.head = ckpt.load("lm_head.weight", vc, dtype);
        }
    }
    if (range.first && range.last && range.layer_begin == 0 && range.layer_end == c.n_layer) {
        for (const auto& name : ckpt.unused()) {
            if (name.size() > 12 && name.compare(name.size() - 12, 12, "rotary_emb.inv_freq") == 0)
                continue;  // a buffer some exporters keep; recomputed from the config
            throw ShapeError(ckpt.dir() + ": tensor '" + name + "' is not used by a " +
                             std::to_string(c.n_layer) +
                             "-layer Llama; config.json and the "
                             "weights disagree");
        }
    }
    return w;
}

StageWeights random_stage_weights(const LlamaConfig& c, const StageRange& range,
                                  at::ScalarType dtype, uint64_t seed) {
    check_range(c, range);
    at::Generator gen   = at::detail::createCPUGenerator(seed);
    const auto    opt   = at::TensorOptions().dtype(dtype);
    auto          randn = [&](std::vector<int64_t> shape, double std) {
        return at::normal(0.0, std, shape, gen, opt);
    };
    auto         norm = [&] { return 1.0 + randn({c.n_embd}, 0.1); };
    StageWeights w;
    w.range = range;
    // The embedding is shared with the head when tied: draw it whenever either end is present,
    // from its own generator, so every stage split sees the same values.
    at::Generator    egen = at::detail::createCPUGenerator(seed ^ 0x9e3779b97f4a7c15ULL);
    const at::Tensor embd = at::normal(0.0, 0.5, {c.n_vocab, c.n_embd}, egen, opt);
    if (range.first) w.tok_embd = embd;
    for (int64_t il = 0; il < c.n_layer; ++il) {
        LayerWeights lw;
        lw.attn_norm = norm();
        lw.ffn_norm  = norm();
        for (Linear l : kLinears) {
            const auto s = linear_shape(c, l);
            lw.linear(l) = randn(s, 1.0 / std::sqrt(static_cast<double>(s[1])));
        }
        if (il >= range.layer_begin && il < range.layer_end) w.layers.push_back(std::move(lw));
    }
    if (range.last) {
        w.out_norm = norm();
        w.head     = c.tie_word_embeddings ? embd : randn({c.n_vocab, c.n_embd}, 0.05);
    }
    return w;
}

void enable_linear_grads(StageWeights& w) {
    for (auto& lw : w.layers)
        for (Linear l : kLinears) {
            at::Tensor& t = lw.linear(l);
            t.set_requires_grad(true);
            if (t.grad().defined()) t.mutable_grad() = at::Tensor();
        }
}

}  // namespace rq::model
