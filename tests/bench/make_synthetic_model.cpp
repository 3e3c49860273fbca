// make_synthetic_model: writes a random Llama in the Hugging Face layout (config.json, BF16
// weights in two shards + model.safetensors.index.json) for memory and scaling benchmarks of
// models larger than the bundled ones. Weights have trained-model-like scales; the model
// means nothing.
// Usage: make_synthetic_model OUT_DIR [--hidden C] [--ff F] [--layers L] [--heads H] [--kv Hkv]
//        [--vocab V]
//        make_synthetic_model OUT_DIR --config config.json   (a released model's shape, e.g.
//        jobs/configs/llama-3.2-1b.json: rope scaling and tied embeddings as it says; the file
//        is copied as the model's config.json)
#include <ATen/ATen.h>
#include <sys/stat.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "requant/io/hf_config.h"
#include "requant/io/safetensors.h"
#include "requant/model/weights.h"

int main(int argc, char** argv) try {
    rq::io::LlamaConfig c;
    c.n_embd = 2048, c.n_ff = 5632, c.n_layer = 12, c.n_head = 16, c.n_head_kv = 4,
    c.n_vocab = 32000;
    std::string out, config_file;
    CLI::App    app{
        "Writes a random Llama (BF16, two shards, Hugging Face layout); default shape: "
           "672 M parameters"};
    app.add_option("out", out, "Output folder")->required();
    app.add_option("--config", config_file, "A released model's config.json (its shape)")
        ->check(CLI::ExistingFile);
    const auto positive = CLI::PositiveNumber;
    app.add_option("--hidden", c.n_embd, "Hidden size")->capture_default_str()->check(positive);
    app.add_option("--ff", c.n_ff, "MLP size")->capture_default_str()->check(positive);
    app.add_option("--layers", c.n_layer, "Decoder layers")->capture_default_str()->check(positive);
    app.add_option("--heads", c.n_head, "Attention heads")->capture_default_str()->check(positive);
    app.add_option("--kv", c.n_head_kv, "Key/value heads")->capture_default_str()->check(positive);
    app.add_option("--vocab", c.n_vocab, "Vocabulary")->capture_default_str()->check(positive);
    CLI11_PARSE(app, argc, argv);
    if (c.n_embd % c.n_head != 0 || c.n_head % c.n_head_kv != 0)
        throw std::runtime_error("--hidden must be a multiple of --heads, --heads of --kv");
    c.head_dim    = c.n_embd / c.n_head;
    c.n_ctx_train = 4096, c.rms_norm_eps = 1e-5, c.rope_theta = 500000,
    c.tie_word_embeddings = false;
    ::mkdir(out.c_str(), 0755);
    if (!config_file.empty()) {
        c = rq::io::load_llama_config(config_file);
        std::ifstream in(config_file);
        std::ofstream(out + "/config.json") << in.rdbuf();
    }
    nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
                          {"model_type", "llama"},
                          {"hidden_act", "silu"},
                          {"vocab_size", c.n_vocab},
                          {"hidden_size", c.n_embd},
                          {"intermediate_size", c.n_ff},
                          {"num_hidden_layers", c.n_layer},
                          {"num_attention_heads", c.n_head},
                          {"num_key_value_heads", c.n_head_kv},
                          {"max_position_embeddings", c.n_ctx_train},
                          {"rms_norm_eps", c.rms_norm_eps},
                          {"rope_theta", c.rope_theta},
                          {"tie_word_embeddings", false},
                          {"torch_dtype", "bfloat16"}};
    if (config_file.empty()) std::ofstream(out + "/config.json") << cfg.dump(2) << "\n";

    // Two shards: layers [0, L/2) with the embedding, the rest with norm and head.
    nlohmann::json weight_map;
    const int64_t  half = c.n_layer / 2;
    for (int shard = 0; shard < 2; ++shard) {
        rq::model::StageRange r{shard == 0 ? 0 : half, shard == 0 ? half : c.n_layer, shard == 0,
                                shard == 1};
        auto                  w = rq::model::random_stage_weights(c, r, at::kBFloat16, 1234);
        std::map<std::string, at::Tensor> t;
        if (r.first) t["model.embed_tokens.weight"] = w.tok_embd;
        for (int64_t il = r.layer_begin; il < r.layer_end; ++il) {
            auto&             lw                     = w.layers[std::size_t(il - r.layer_begin)];
            const std::string p                      = "model.layers." + std::to_string(il) + ".";
            t[p + "input_layernorm.weight"]          = lw.attn_norm;
            t[p + "post_attention_layernorm.weight"] = lw.ffn_norm;
            for (auto l : rq::model::kLinears)
                t[rq::model::linear_tensor_name(il, l)] = lw.linear(l);
        }
        if (r.last) t["model.norm.weight"] = w.out_norm;
        if (r.last && !c.tie_word_embeddings) t["lm_head.weight"] = w.head;
        const std::string file = "model-0000" + std::to_string(shard + 1) + "-of-00002.safetensors";
        rq::io::write_safetensors(out + "/" + file, t);
        for (const auto& kv : t) weight_map[kv.first] = file;
    }
    std::ofstream(out + "/model.safetensors.index.json")
        << nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", weight_map}}.dump(
               1)
        << "\n";
    std::printf("wrote %s: %.1f M parameters\n", out.c_str(), rq::io::n_params(c) / 1e6);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "make_synthetic_model: %s\n", e.what());
    return 1;
}
