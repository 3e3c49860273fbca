#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

// sentencepiece tokenizers (tokenizer.model), through the librequant_spm shim loaded at run
// time (see src/io/spm_shim.cpp for why). The shim is looked up in $RQ_SPM_SHIM, then next to
// the executable, then in ../lib and ../lib/requant relative to it.

namespace rq::io {

class Tokenizer {
  public:
    // Throws IoError if the file or the shim cannot be found, FormatError if sentencepiece
    // cannot parse the model.
    explicit Tokenizer(const std::string& model_path);
    ~Tokenizer();
    Tokenizer(const Tokenizer&)            = delete;
    Tokenizer& operator=(const Tokenizer&) = delete;

    std::vector<int32_t> encode(std::string_view text) const;  // no BOS, no EOS
    std::string          decode(const std::vector<int32_t>& ids) const;
    int                  vocab_size() const;
    int                  bos_id() const;
    int                  eos_id() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace rq::io
