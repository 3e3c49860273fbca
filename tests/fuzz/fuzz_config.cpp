// libFuzzer: a Hugging Face config.json, as a Llama config.
#include "fuzz_common.h"
#include "requant/io/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    return rq::fuzz::refuse_only_with_errors([&] {
        const rq::io::LlamaConfig c = rq::io::parse_llama_config(text, "config.json");
        (void)rq::io::n_params(c);
    });
}
