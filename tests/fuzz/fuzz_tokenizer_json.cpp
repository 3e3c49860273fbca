// libFuzzer: a tokenizer.json (byte-level BPE), then a short text encoded both ways and decoded.
#include "fuzz_common.h"
#include "requant/io/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string dir = rq::fuzz::scratch() + "/tok";
    std::filesystem::create_directories(dir);
    rq::fuzz::put(dir + "/tokenizer.json", data, size);
    return rq::fuzz::refuse_only_with_errors([&] {
        const rq::io::Tokenizer t(dir + "/tokenizer.json");
        const std::string       text =
            "Hello, world! It's 2026 \xc3\xa9t\xc3\xa9 \n\n  tabs\tand <|eot_id|>";
        const auto ids = t.encode(text, 8);  // cut into chunks where the regex allows
        if (ids != t.encode_ref(text)) std::abort();
        (void)t.decode(ids);
    });
}
