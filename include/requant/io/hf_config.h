#pragma once
#include <cstdint>
#include <string>

// config.json of a Hugging Face LlamaForCausalLM, parsed and checked. Anything the model code
// does not implement (other architectures, biases, rope types) is refused here, by name.

namespace rq::io {

struct RopeScaling {
    std::string type                  = "default";  // "default" (none) | "llama3"
    double      factor                = 1.0;        // llama3: wavelength stretch of low frequencies
    double      low_freq_factor       = 1.0;
    double      high_freq_factor      = 4.0;
    int64_t     original_max_position = 8192;  // original_max_position_embeddings
};

struct LlamaConfig {
    int64_t     n_vocab      = 0;  // V   vocab_size
    int64_t     n_embd       = 0;  // C   hidden_size
    int64_t     n_ff         = 0;  // F   intermediate_size
    int64_t     n_layer      = 0;  // L   num_hidden_layers
    int64_t     n_head       = 0;  // H   num_attention_heads
    int64_t     n_head_kv    = 0;  // Hkv num_key_value_heads (defaults to H)
    int64_t     head_dim     = 0;  // D   head_dim (defaults to C / H)
    int64_t     n_ctx_train  = 0;  // max_position_embeddings
    double      rms_norm_eps = 1e-6;
    double      rope_theta   = 10000.0;
    RopeScaling rope;
    bool        tie_word_embeddings = false;
    std::string torch_dtype;  // informational: the dtype the checkpoint was saved in
};

// Parses and validates config.json text; `origin` names the file in error messages.
// Throws FormatError (bad JSON, missing or mistyped key) or ConfigError (unsupported model).
LlamaConfig parse_llama_config(const std::string& json_text, const std::string& origin);
// Reads and parses a config.json file. Throws IoError if it cannot be read.
LlamaConfig load_llama_config(const std::string& path);

// Number of parameters: every weight, the embedding once if tied.
int64_t n_params(const LlamaConfig& c);

}  // namespace rq::io
