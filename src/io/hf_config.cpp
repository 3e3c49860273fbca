// config.json parsing for Llama models (requant/io/hf_config.h).
#include "requant/io/hf_config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "requant/error.h"

namespace rq::io {
namespace {

using nlohmann::json;

int64_t get_int(const json& j, const char* key, const std::string& where, int64_t fallback = -1) {
    if (!j.contains(key) || j[key].is_null()) {
        if (fallback >= 0) return fallback;
        throw FormatError(where + "missing key '" + key + "'");
    }
    if (!j[key].is_number_integer() || j[key].get<int64_t>() <= 0)
        throw FormatError(where + "'" + key + "' must be a positive integer, got " + j[key].dump());
    return j[key].get<int64_t>();
}

double get_num(const json& j, const char* key, const std::string& where, double fallback) {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_number() || j[key].get<double>() <= 0)
        throw FormatError(where + "'" + key + "' must be a positive number, got " + j[key].dump());
    return j[key].get<double>();
}

bool get_bool(const json& j, const char* key, const std::string& where, bool fallback) {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_boolean())
        throw FormatError(where + "'" + key + "' must be true or false, got " + j[key].dump());
    return j[key].get<bool>();
}

std::string get_str(const json& j, const char* key, const std::string& where,
                    const std::string& fallback) {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_string())
        throw FormatError(where + "'" + key + "' must be a string, got " + j[key].dump());
    return j[key].get<std::string>();
}

bool has(const json& j, const char* key) {
    return j.contains(key) && !j[key].is_null();
}

}  // namespace

LlamaConfig parse_llama_config(const std::string& json_text, const std::string& origin) {
    const std::string where = origin + ": ";
    json              j;
    try {
        j = json::parse(json_text);
    } catch (const json::exception& e) {
        throw FormatError(where + "not valid JSON: " + e.what());
    }
    if (!j.is_object()) throw FormatError(where + "not a JSON object");

    bool is_llama = get_str(j, "model_type", where, "") == "llama";
    if (j.contains("architectures") && j["architectures"].is_array()) {
        is_llama = false;
        for (const auto& a : j["architectures"])
            if (a == "LlamaForCausalLM") is_llama = true;
    }
    if (!is_llama)
        throw ConfigError(where + "unsupported architecture " +
                          (j.contains("architectures")
                               ? j["architectures"].dump()
                               : get_str(j, "model_type", where, "(none)")) +
                          "; requant-dist supports LlamaForCausalLM");
    const std::string act = get_str(j, "hidden_act", where, "silu");
    if (act != "silu")
        throw ConfigError(where + "unsupported hidden_act '" + act + "' (silu only)");
    if (get_bool(j, "attention_bias", where, false) || get_bool(j, "mlp_bias", where, false))
        throw ConfigError(where + "attention_bias/mlp_bias are not supported");

    LlamaConfig c;
    c.n_vocab     = get_int(j, "vocab_size", where);
    c.n_embd      = get_int(j, "hidden_size", where);
    c.n_ff        = get_int(j, "intermediate_size", where);
    c.n_layer     = get_int(j, "num_hidden_layers", where);
    c.n_head      = get_int(j, "num_attention_heads", where);
    c.n_head_kv   = get_int(j, "num_key_value_heads", where, c.n_head);
    c.n_ctx_train = get_int(j, "max_position_embeddings", where, 2048);
    if (c.n_head % c.n_head_kv != 0)
        throw ConfigError(where + "num_attention_heads (" + std::to_string(c.n_head) +
                          ") is not a multiple of num_key_value_heads (" +
                          std::to_string(c.n_head_kv) + ")");
    if (!has(j, "head_dim") && c.n_embd % c.n_head != 0)
        throw ConfigError(where + "hidden_size is not a multiple of num_attention_heads");
    c.head_dim = get_int(j, "head_dim", where, c.n_embd / c.n_head);
    if (c.head_dim % 2 != 0) throw ConfigError(where + "head_dim must be even for RoPE");
    c.rms_norm_eps        = get_num(j, "rms_norm_eps", where, 1e-6);
    c.rope_theta          = get_num(j, "rope_theta", where, 10000.0);
    c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", where, false);
    c.torch_dtype         = get_str(j, "torch_dtype", where, "");

    if (has(j, "rope_scaling")) {
        const json& rs = j["rope_scaling"];
        if (!rs.is_object()) throw FormatError(where + "rope_scaling must be an object");
        std::string type =
            get_str(rs, "rope_type",
                    where + "rope_scaling: ", get_str(rs, "type", where + "rope_scaling: ", ""));
        if (type != "llama3" && type != "default")
            throw ConfigError(where + "unsupported rope_scaling type '" + type +
                              "' (supported: llama3, default)");
        c.rope.type = type;
        if (type == "llama3") {
            const std::string w          = where + "rope_scaling: ";
            c.rope.factor                = get_num(rs, "factor", w, -1);
            c.rope.low_freq_factor       = get_num(rs, "low_freq_factor", w, -1);
            c.rope.high_freq_factor      = get_num(rs, "high_freq_factor", w, -1);
            c.rope.original_max_position = get_int(rs, "original_max_position_embeddings", w);
            if (c.rope.factor < 0 || c.rope.low_freq_factor < 0 || c.rope.high_freq_factor < 0)
                throw FormatError(w + "llama3 needs factor, low_freq_factor and high_freq_factor");
            if (c.rope.high_freq_factor <= c.rope.low_freq_factor)
                throw ConfigError(w + "high_freq_factor must exceed low_freq_factor");
        }
    }
    return c;
}

LlamaConfig load_llama_config(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw IoError(path + ": cannot open: " + errno_string());
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_llama_config(ss.str(), path);
}

int64_t n_params(const LlamaConfig& c) {
    const int64_t attn  = c.n_embd * c.head_dim * (2 * c.n_head + 2 * c.n_head_kv);
    const int64_t mlp   = 3 * c.n_embd * c.n_ff;
    const int64_t layer = attn + mlp + 2 * c.n_embd;
    const int64_t embd  = c.n_vocab * c.n_embd * (c.tie_word_embeddings ? 1 : 2);
    return c.n_layer * layer + embd + c.n_embd;
}

}  // namespace rq::io
