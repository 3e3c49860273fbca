// libFuzzer: model.safetensors.index.json beside a valid config.json (a checkpoint folder).
#include "fuzz_common.h"
#include "requant/io/hf_checkpoint.h"

namespace {
const char* kConfig = R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
  "intermediate_size": 172, "num_attention_heads": 8, "num_key_value_heads": 4,
  "num_hidden_layers": 2, "vocab_size": 512, "max_position_embeddings": 256,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
  "torch_dtype": "float32"})";
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string dir  = rq::fuzz::scratch() + "/ckpt";
    static const bool made = [&] {
        std::filesystem::create_directories(dir);
        std::ofstream(dir + "/config.json") << kConfig;
        return true;
    }();
    (void)made;
    rq::fuzz::put(dir + "/model.safetensors.index.json", data, size);
    return rq::fuzz::refuse_only_with_errors([&] { rq::io::HfCheckpoint c(dir); });
}
