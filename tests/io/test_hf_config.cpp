// Tests of Hugging Face model folders: config.json parsing (requant/io/hf_config.h) on the three
// bundled models and on every refusal, and HfCheckpoint (requant/io/hf_checkpoint.h) on the
// single-file and sharded bundled models and on small broken folders written to /tmp.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "io_fixtures.h"
#include "requant/error.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/io/hf_config.h"
#include "requant/io/safetensors.h"

namespace {

using nlohmann::json;
using rq::io::HfCheckpoint;
using rq::io::LlamaConfig;
using rq::io::load_llama_config;
using rq::io::parse_llama_config;
using rq::io_test::expect_error;
using rq::io_test::model_dir;
using rq::io_test::TempDir;

// A small valid config: V=16 C=8 F=12 L=1 H=2 Hkv=1 (D=4), tied.
json tiny_config() {
    return {{"architectures", json::array({"LlamaForCausalLM"})},
            {"model_type", "llama"},
            {"hidden_act", "silu"},
            {"vocab_size", 16},
            {"hidden_size", 8},
            {"intermediate_size", 12},
            {"num_hidden_layers", 1},
            {"num_attention_heads", 2},
            {"num_key_value_heads", 1},
            {"tie_word_embeddings", true}};
}

LlamaConfig parse(const json& j) {
    return parse_llama_config(j.dump(), "config.json");
}

// ---- config.json --------------------------------------------------------------------------

TEST(HfConfig, Llama7mEn) {
    const LlamaConfig c = load_llama_config(model_dir("llama-7m-en") + "/config.json");
    EXPECT_EQ(c.n_layer, 8);
    EXPECT_EQ(c.n_embd, 256);
    EXPECT_EQ(c.n_head, 8);
    EXPECT_EQ(c.n_head_kv, 4);
    EXPECT_EQ(c.head_dim, 32);
    EXPECT_EQ(c.n_ff, 688);
    EXPECT_EQ(c.n_vocab, 4096);
    EXPECT_EQ(c.n_ctx_train, 512);
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
    EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
    EXPECT_EQ(c.rope.type, "default");
    EXPECT_EQ(c.torch_dtype, "bfloat16");
    EXPECT_EQ(rq::io::n_params(c), 6852864);  // "6.85 M" in its REFERENCE.md
}

TEST(HfConfig, Llama3TinyRandom) {
    const LlamaConfig c = load_llama_config(model_dir("llama3-tiny-random") + "/config.json");
    EXPECT_EQ(c.n_layer, 3);
    EXPECT_EQ(c.n_embd, 256);
    EXPECT_EQ(c.n_head, 4);
    EXPECT_EQ(c.n_head_kv, 2);
    EXPECT_EQ(c.head_dim, 64);  // explicit: not hidden / heads
    EXPECT_EQ(c.n_ff, 512);
    EXPECT_EQ(c.n_vocab, 1024);
    EXPECT_EQ(c.n_ctx_train, 131072);
    EXPECT_FALSE(c.tie_word_embeddings);
    EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
    EXPECT_EQ(c.rope.type, "llama3");
    EXPECT_DOUBLE_EQ(c.rope.factor, 32.0);
    EXPECT_DOUBLE_EQ(c.rope.low_freq_factor, 1.0);
    EXPECT_DOUBLE_EQ(c.rope.high_freq_factor, 4.0);
    EXPECT_EQ(c.rope.original_max_position, 8192);
    EXPECT_EQ(c.torch_dtype, "float16");
    EXPECT_EQ(rq::io::n_params(c), 2295552);  // "2.30 M", untied head counted
}

TEST(HfConfig, Stories260k) {
    const LlamaConfig c = load_llama_config(model_dir("stories260k") + "/config.json");
    EXPECT_EQ(c.n_layer, 5);
    EXPECT_EQ(c.n_embd, 64);
    EXPECT_EQ(c.n_head, 8);
    EXPECT_EQ(c.n_head_kv, 4);
    EXPECT_EQ(c.head_dim, 8);
    EXPECT_EQ(c.n_ff, 172);
    EXPECT_EQ(c.n_vocab, 512);
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_EQ(c.torch_dtype, "float32");
}

TEST(HfConfig, DefaultsFollowHuggingFace) {
    json              j = {{"model_type", "llama"},   {"vocab_size", 16},       {"hidden_size", 8},
                           {"intermediate_size", 12}, {"num_hidden_layers", 1}, {"num_attention_heads", 2}};
    const LlamaConfig c = parse(j);
    EXPECT_EQ(c.n_head_kv, 2);  // = H
    EXPECT_EQ(c.head_dim, 4);   // = C / H
    EXPECT_EQ(c.n_ctx_train, 2048);
    EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
    EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
    EXPECT_FALSE(c.tie_word_embeddings);
    EXPECT_EQ(c.rope.type, "default");
}

TEST(HfConfigErrors, UnsupportedArchitecture) {
    for (const char* arch : {"MistralForCausalLM", "GPT2LMHeadModel"}) {
        json j             = tiny_config();
        j["architectures"] = json::array({arch});
        expect_error<rq::ConfigError>([&] { parse(j); }, {"config.json", arch});
    }
}

TEST(HfConfigErrors, UnsupportedRopeType) {
    for (const char* type : {"yarn", "linear", "dynamic"}) {
        json j            = tiny_config();
        j["rope_scaling"] = {{"rope_type", type}, {"factor", 2.0}};
        expect_error<rq::ConfigError>([&] { parse(j); },
                                      {"config.json", "'" + std::string(type) + "'"});
    }
}

TEST(HfConfigErrors, Llama3RopeNeedsItsFactors) {
    json j            = tiny_config();
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"original_max_position_embeddings", 8192}};
    expect_error<rq::FormatError>([&] { parse(j); }, {"config.json", "rope_scaling"});
}

TEST(HfConfigErrors, MissingOrInvalidHiddenSize) {
    json j = tiny_config();
    j.erase("hidden_size");
    expect_error<rq::FormatError>([&] { parse(j); }, {"config.json", "'hidden_size'"});
    for (const json& bad : {json(-8), json("8"), json(8.5)}) {
        j["hidden_size"] = bad;
        expect_error<rq::FormatError>([&] { parse(j); }, {"config.json", "'hidden_size'"});
    }
}

TEST(HfConfigErrors, HeadsNotMultipleOfKvHeads) {
    json j                   = tiny_config();
    j["num_attention_heads"] = 8;
    j["num_key_value_heads"] = 3;
    expect_error<rq::ConfigError>([&] { parse(j); }, {"config.json", "num_key_value_heads"});
}

TEST(HfConfigErrors, UnsupportedActivationAndBiases) {
    const std::vector<std::pair<std::string, json>> cases = {
        {"hidden_act", "gelu"}, {"attention_bias", true}, {"mlp_bias", true}};
    for (const auto& c : cases) {
        json j     = tiny_config();
        j[c.first] = c.second;
        expect_error<rq::ConfigError>([&] { parse(j); }, {"config.json", c.first});
    }
}

TEST(HfConfigErrors, MistypedStringKeyIsFormatError) {
    // Anything thrown must be an rq::Error: cli catches only those.
    json j          = tiny_config();
    j["hidden_act"] = 5;
    expect_error<rq::FormatError>([&] { parse(j); }, {"config.json", "hidden_act"});
}

TEST(HfConfigErrors, InvalidJson) {
    expect_error<rq::FormatError>([] { parse_llama_config("{\"vocab_size\": 16,", "config.json"); },
                                  {"config.json", "not valid JSON"});
    expect_error<rq::FormatError>([] { parse_llama_config("[16]", "config.json"); },
                                  {"config.json", "not a JSON object"});
}

TEST(HfConfigErrors, MissingFile) {
    TempDir tmp;
    expect_error<rq::IoError>([&] { load_llama_config(tmp.file("config.json")); },
                              {tmp.file("config.json")});
}

// ---- HfCheckpoint --------------------------------------------------------------------------

TEST(HfCheckpoint, SingleFileModel) {
    HfCheckpoint ck(model_dir("llama-7m-en") + "/");  // a trailing slash is fine
    EXPECT_EQ(ck.dir(), model_dir("llama-7m-en"));
    EXPECT_EQ(ck.config().n_layer, 8);
    EXPECT_EQ(ck.tensor_names().size(), 74u);  // 8 x 9 + embedding + final norm; head is tied
    EXPECT_TRUE(ck.contains("model.layers.7.mlp.down_proj.weight"));
    EXPECT_FALSE(ck.contains("lm_head.weight"));

    const at::Tensor w = ck.load("model.layers.0.mlp.down_proj.weight", {256, 688}, at::kFloat);
    EXPECT_EQ(w.scalar_type(), at::kFloat);
    EXPECT_EQ(w.sizes(), (std::vector<int64_t>{256, 688}));
    EXPECT_GT(w.abs().sum().item<float>(), 0.0f);
    EXPECT_EQ(ck.used().size(), 1u);
    EXPECT_EQ(ck.unused().size(), 73u);
}

TEST(HfCheckpoint, ShardedModel) {
    const std::string dir = model_dir("llama3-tiny-random");
    HfCheckpoint      ck(dir);
    EXPECT_EQ(ck.tensor_names().size(), 30u);  // 3 x 9 + embedding + norm + untied head
    EXPECT_TRUE(ck.contains("lm_head.weight"));
    // One tensor from each shard, equal to reading the shard directly.
    const at::Tensor        head = ck.load("lm_head.weight", {1024, 256}, at::kFloat);
    const at::Tensor        embd = ck.load("model.embed_tokens.weight", {1024, 256}, at::kFloat);
    rq::io::SafetensorsFile s1(dir + "/model-00001-of-00002.safetensors");
    rq::io::SafetensorsFile s2(dir + "/model-00002-of-00002.safetensors");
    EXPECT_TRUE(at::equal(embd, s1.load("model.embed_tokens.weight", at::kFloat)));
    EXPECT_TRUE(at::equal(head, s2.load("lm_head.weight", at::kFloat)));
    EXPECT_FALSE(at::equal(head, embd));
}

// A fake model folder: tiny config.json and the given weights in model.safetensors.
struct FakeModel {
    TempDir tmp;
    explicit FakeModel(const std::map<std::string, at::Tensor>& weights) {
        rq::io_test::write_file(tmp.file("config.json"), tiny_config().dump());
        if (!weights.empty()) rq::io::write_safetensors(tmp.file("model.safetensors"), weights);
    }
    void write_index(const json& weight_map) const {
        rq::io_test::write_file(
            tmp.file("model.safetensors.index.json"),
            json{{"metadata", json::object()}, {"weight_map", weight_map}}.dump());
    }
};

TEST(HfCheckpointErrors, MissingTensor) {
    FakeModel    m({{"model.norm.weight", at::ones({8})}});
    HfCheckpoint ck(m.tmp.path());
    expect_error<rq::FormatError>(
        [&] {
            ck.load("lm_head.weight", {16, 8}, at::kFloat);
        },
        {m.tmp.path(), "tensor 'lm_head.weight'", "missing"});
}

TEST(HfCheckpointErrors, WrongShape) {
    FakeModel    m({{"model.norm.weight", at::ones({8})}});
    HfCheckpoint ck(m.tmp.path());
    expect_error<rq::ShapeError>(
        [&] { ck.load("model.norm.weight", {9}, at::kFloat); },
        {"model.safetensors", "tensor 'model.norm.weight'", "expected [9]", "got [8]"});
    expect_error<rq::ShapeError>(
        [&] {
            ck.load("model.norm.weight", {1, 8}, at::kFloat);
        },
        {"expected [", "got ["});
    EXPECT_TRUE(ck.used().empty());
}

TEST(HfCheckpointErrors, IntegerWeight) {
    FakeModel    m({{"model.norm.weight", at::ones({8}, at::kInt)}});
    HfCheckpoint ck(m.tmp.path());
    expect_error<rq::ShapeError>([&] { ck.load("model.norm.weight", {8}, at::kFloat); },
                                 {"model.safetensors", "tensor 'model.norm.weight'", "I32"});
}

TEST(HfCheckpointErrors, IndexedShardLacksTensor) {
    FakeModel m({});
    rq::io::write_safetensors(m.tmp.file("shard-1.safetensors"), {{"a", at::ones({8})}});
    m.write_index({{"a", "shard-1.safetensors"}, {"b", "shard-1.safetensors"}});
    HfCheckpoint ck(m.tmp.path());
    EXPECT_TRUE(ck.contains("b"));
    EXPECT_EQ(ck.load("a", {8}, at::kFloat).sum().item<float>(), 8.0f);
    expect_error<rq::FormatError>([&] { ck.load("b", {8}, at::kFloat); },
                                  {"shard-1.safetensors", "tensor 'b'", "index.json"});
}

TEST(HfCheckpointErrors, IndexedShardMissing) {
    FakeModel m({});
    m.write_index({{"a", "shard-2.safetensors"}});
    HfCheckpoint ck(m.tmp.path());  // shards are opened when first needed
    expect_error<rq::IoError>([&] { ck.load("a", {8}, at::kFloat); }, {"shard-2.safetensors"});
}

TEST(HfCheckpointErrors, BadIndex) {
    FakeModel m({});
    m.write_index({{"a", "../elsewhere/shard.safetensors"}});
    expect_error<rq::FormatError>([&] { HfCheckpoint ck(m.tmp.path()); },
                                  {"model.safetensors.index.json", "'a'"});
    rq::io_test::write_file(m.tmp.file("model.safetensors.index.json"), "{\"metadata\": {}}");
    expect_error<rq::FormatError>([&] { HfCheckpoint ck(m.tmp.path()); },
                                  {"model.safetensors.index.json", "weight_map"});
}

TEST(HfCheckpointErrors, NoWeightsOrNoConfig) {
    FakeModel m({});
    expect_error<rq::IoError>([&] { HfCheckpoint ck(m.tmp.path()); },
                              {m.tmp.path(), "model.safetensors"});
    TempDir empty;
    expect_error<rq::IoError>([&] { HfCheckpoint ck(empty.path()); }, {"config.json"});
}

}  // namespace
