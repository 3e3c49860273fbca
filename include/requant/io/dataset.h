#pragma once
#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

// Evaluation and calibration data as fixed-length token sequences.
// N = number of sequences, T = sequence length.

namespace rq::io {

class Tokenizer;

struct TokenData {
    at::Tensor  tokens;           // int64 [N, T]
    int64_t     n_available = 0;  // windows/rows in the source before max_seqs was applied
    int64_t     n_tokens    = 0;  // tokens in the source (text: after encoding)
    std::string source;           // the data file
};

// A safetensors file with an integer `tokens` tensor [N, T]; other tensors are ignored.
// Throws FormatError if `tokens` is missing, not 2-D, or not an integer dtype.
TokenData load_token_dataset(const std::string& path, int64_t max_seqs = -1);

// A text file, encoded with the tokenizer (no BOS; the ids of the whole text, memory bounded by
// the windows kept: see Tokenizer::encode_each), cut into non-overlapping windows of
// seq_len tokens (ids[i*T:(i+1)*T]); the incomplete tail is dropped. Throws IoError / ConfigError
// (fewer tokens than one window).
TokenData load_text_windows(const std::string& text_path, const Tokenizer& tok, int64_t seq_len,
                            int64_t max_seqs = -1);
TokenData load_text_windows(const std::string& text_path, const std::string& tokenizer_path,
                            int64_t seq_len, int64_t max_seqs = -1);

// Either of the above, by extension: *.safetensors is a token dataset, anything else is text
// tokenized with the model folder's tokenizer (Tokenizer::for_model: a byte-level BPE
// tokenizer.json, else tokenizer.model).
// `threads`: encoding threads (byte-level BPE; the ids do not depend on it).
TokenData load_eval_data(const std::string& path, const std::string& model_dir, int64_t seq_len,
                         int64_t max_seqs = -1, int threads = 1);

}  // namespace rq::io
