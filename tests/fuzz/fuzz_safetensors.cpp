// libFuzzer: a safetensors file (8-byte header length, JSON header, data), every tensor loaded.
#include <ATen/ATen.h>

#include "fuzz_common.h"
#include "requant/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = rq::fuzz::scratch() + "/f.safetensors";
    rq::fuzz::put(path, data, size);
    return rq::fuzz::refuse_only_with_errors([&] {
        const rq::io::SafetensorsFile f(path);
        for (const auto& t : f.tensors()) {
            (void)f.load(t.name, at::kFloat, rq::io::Finite::require);
            (void)f.view(t.name);
        }
        for (const auto& [k, v] : f.metadata()) (void)k, (void)v;
    });
}
