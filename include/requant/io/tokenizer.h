#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

// A model's tokenizer: a byte-level BPE tokenizer.json (Llama 3.x; requant/io/bpe_tokenizer.h)
// or a sentencepiece tokenizer.model. sentencepiece runs through the librequant_spm shim loaded
// at run time (see src/io/spm_shim.cpp for why), looked up in $RQ_SPM_SHIM, then next to the
// executable, then in ../lib and ../lib/requant relative to it.

namespace rq::io {

inline constexpr std::size_t kEncodeChunk = 64 * 1024;  // bytes

// text cut before each single space between ASCII letters or digits that lies at least
// `target` bytes after the previous cut; the spaces themselves are dropped.
std::vector<std::string_view> space_chunks(std::string_view text, std::size_t target);

class Tokenizer {
  public:
    // A file ending in .json is read as a byte-level BPE tokenizer.json (its folder's
    // tokenizer_config.json names BOS and EOS), any other as a sentencepiece model. Throws
    // IoError if the file or the shim cannot be found, FormatError if it cannot be parsed.
    explicit Tokenizer(const std::string& path);
    ~Tokenizer();
    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;

    // A model folder's tokenizer: tokenizer.json when it is a byte-level BPE, otherwise
    // tokenizer.model; IoError naming both when neither is usable. locate: which file.
    static Tokenizer   for_model(const std::string& model_dir);
    static std::string locate(const std::string& model_dir);
    const std::string& path() const;
    bool               byte_level() const;  // a tokenizer.json BPE

    // Threads used by encode and encode_each where the text can be cut (BPE only; default 1).
    void set_threads(int threads);

    // No BOS, no EOS. Encodes chunks of about `chunk` bytes cut at single spaces between ASCII
    // letters (or digits, sentencepiece) when chunked() (bounded memory); the ids equal
    // encode_ref's.
    std::vector<int32_t> encode(std::string_view text, std::size_t chunk = kEncodeChunk) const;
    std::vector<int32_t> encode_ref(std::string_view text) const;  // the whole text at once
    // encode's ids in pieces: each chunk's ids, and how many bytes of text are now encoded.
    using ChunkFn = std::function<void(const std::vector<int32_t>& ids, std::size_t done)>;
    void encode_each(std::string_view text, const ChunkFn& fn,
                     std::size_t chunk = kEncodeChunk) const;
    // sentencepiece: the model's pieces never span a space and it adds a dummy prefix; BPE: the
    // pre-tokenizer regex is one whose matches never hold a letter followed by a space. Either
    // way encoding text cut at those spaces gives the ids of the whole.
    bool        chunked() const;
    std::string decode(const std::vector<int32_t>& ids) const;
    int         vocab_size() const;
    int         bos_id() const;
    int         eos_id() const;

  private:
    Tokenizer(const std::string& json_path, const nlohmann::json& json);
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace rq::io
