#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

// sentencepiece tokenizers (tokenizer.model), through the librequant_spm shim loaded at run
// time (see src/io/spm_shim.cpp for why). The shim is looked up in $RQ_SPM_SHIM, then next to
// the executable, then in ../lib and ../lib/requant relative to it.

namespace rq::io {

inline constexpr std::size_t kEncodeChunk = 64 * 1024;  // bytes

// text cut before each single space between ASCII letters or digits that lies at least
// `target` bytes after the previous cut; the spaces themselves are dropped.
std::vector<std::string_view> space_chunks(std::string_view text, std::size_t target);

class Tokenizer {
  public:
    // Throws IoError if the file or the shim cannot be found, FormatError if sentencepiece
    // cannot parse the model.
    explicit Tokenizer(const std::string& model_path);
    ~Tokenizer();
    Tokenizer(const Tokenizer&)            = delete;
    Tokenizer& operator=(const Tokenizer&) = delete;

    // No BOS, no EOS. Encodes chunks of about `chunk` bytes cut at single spaces between ASCII
    // letters or digits when chunked() (bounded memory); the ids equal encode_ref's.
    std::vector<int32_t> encode(std::string_view text, std::size_t chunk = kEncodeChunk) const;
    std::vector<int32_t> encode_ref(std::string_view text) const;  // the whole text at once
    // encode's ids in pieces: each chunk's ids, and how many bytes of text are now encoded.
    using ChunkFn = std::function<void(const std::vector<int32_t>& ids, std::size_t done)>;
    void encode_each(std::string_view text, const ChunkFn& fn,
                     std::size_t chunk = kEncodeChunk) const;
    // True when the model's pieces never span a space and it adds a dummy prefix, so that
    // encoding text cut at spaces gives the ids of the whole.
    bool        chunked() const;
    std::string decode(const std::vector<int32_t>& ids) const;
    int         vocab_size() const;
    int         bos_id() const;
    int         eos_id() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace rq::io
