#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

// A Hugging Face tokenizer.json whose model is a byte-level BPE (Llama 3.x, GPT-2 style):
// added and special tokens matched in the raw text first (leftmost, longest), the rest split by
// the pre-tokenizer's regex (PCRE2, requant/io/regex.h) into pieces, each piece's bytes
// encoded by the BPE model (requant/io/bpe.h). No normalizer, no post-processor (no BOS).

namespace rq::io {

// True when `json` describes a byte-level BPE: model type BPE and a ByteLevel pre-tokenizer or
// decoder. Llama 2 folders ship a sentencepiece-style BPE tokenizer.json: false for those.
bool is_byte_level_bpe(const nlohmann::json& json);

class BpeTokenizer {
  public:
    // `json` is the parsed tokenizer.json at `path`; `config` the parsed tokenizer_config.json
    // beside it (or null) for the BOS and EOS tokens. Throws FormatError naming `path` for
    // anything this reader does not implement (a normalizer, another pre-tokenizer, dropout).
    BpeTokenizer(const nlohmann::json& json, const nlohmann::json& config, const std::string& path);
    ~BpeTokenizer();
    BpeTokenizer(const BpeTokenizer&)            = delete;
    BpeTokenizer& operator=(const BpeTokenizer&) = delete;

    // The ids of `text` in pieces, in order, with how many bytes of text they cover. With a
    // known pre-tokenizer regex, text between added tokens is cut into chunks of about `chunk`
    // bytes before single spaces between ASCII letters (a piece boundary for those patterns),
    // and `threads` threads encode chunks at once; ids equal encode_ref's either way.
    using ChunkFn = std::function<void(const std::vector<int32_t>& ids, std::size_t done)>;
    void encode_each(std::string_view text, const ChunkFn& fn, std::size_t chunk,
                     int threads) const;
    // One pass over the whole text, the plain merge loop, no cache.
    std::vector<int32_t> encode_ref(std::string_view text) const;
    std::string          decode(const std::vector<int32_t>& ids) const;
    bool                 chunked() const;  // the regex is one whose cuts are proven safe
    int                  vocab_size() const;
    int                  bos_id() const;
    int                  eos_id() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace rq::io
