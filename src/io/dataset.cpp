// Token sequences from token datasets and text (requant/io/dataset.h).
#include "requant/io/dataset.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <string_view>
#include <vector>

#include "requant/error.h"
#include "requant/io/mmap_file.h"
#include "requant/io/safetensors.h"
#include "requant/io/tokenizer.h"

namespace rq::io {

TokenData load_token_dataset(const std::string& path, int64_t max_seqs) {
    SafetensorsFile   f(path);
    const TensorInfo* t = f.find("tokens");
    if (t == nullptr)
        throw FormatError(base_name(path) +
                          ": no 'tokens' tensor (a token dataset holds an "
                          "integer tensor 'tokens' [n, L])");
    switch (t->dtype) {
        case DType::I64:
        case DType::I32:
        case DType::I16:
        case DType::U8:
            break;
        default:
            throw FormatError(base_name(path) + ": tensor 'tokens' has dtype " +
                              dtype_name(t->dtype) + "; token ids must be an integer type");
    }
    if (t->shape.size() != 2 || t->shape[0] == 0 || t->shape[1] < 2)
        throw FormatError(base_name(path) + ": tensor 'tokens' has shape " +
                          shape_string(t->shape) + "; expected [n, L] with n >= 1, L >= 2");
    TokenData d;
    d.source      = path;
    d.tokens      = f.load("tokens", at::kLong);
    d.n_available = d.tokens.size(0);
    d.n_tokens    = d.tokens.numel();
    if (max_seqs >= 0 && max_seqs < d.n_available)
        d.tokens = d.tokens.narrow(0, 0, max_seqs).clone();
    return d;
}

TokenData load_text_windows(const std::string& text_path, const Tokenizer& tok, int64_t seq_len,
                            int64_t max_seqs) {
    if (seq_len < 2)
        throw ConfigError("sequence length must be at least 2, got " + std::to_string(seq_len));
    MappedFile           text(text_path);
    const int64_t        keep = max_seqs >= 0 ? max_seqs * seq_len : -1;  // ids worth keeping
    std::vector<int32_t> ids;  // the first `keep` ids (all when keep < 0)
    int64_t              n_ids = 0;
    // Text pages are dropped as they are encoded, and ids past the windows asked for are only
    // counted: the memory is that of the windows kept, whatever the file's size.
    tok.encode_each(
        std::string_view(reinterpret_cast<const char*>(text.data()), text.size()),
        [&](const std::vector<int32_t>& chunk, std::size_t done) {
            n_ids += static_cast<int64_t>(chunk.size());
            const std::size_t room = keep < 0 ? chunk.size()
                                              : static_cast<std::size_t>(std::max<int64_t>(
                                                    0, keep - static_cast<int64_t>(ids.size())));
            ids.insert(ids.end(), chunk.begin(), chunk.begin() + std::min(room, chunk.size()));
            text.release(0, done);
        });
    const int64_t n_win = n_ids / seq_len;
    if (n_win == 0)
        throw ConfigError(base_name(text_path) + ": " + std::to_string(n_ids) +
                          " tokens, fewer than one window of " + std::to_string(seq_len));
    const int64_t n = max_seqs >= 0 ? std::min(n_win, max_seqs) : n_win;
    TokenData     d;
    d.source      = text_path;
    d.n_available = n_win;
    d.n_tokens    = n_ids;
    d.tokens      = at::empty({n, seq_len}, at::kLong);
    auto acc      = d.tokens.accessor<int64_t, 2>();
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < seq_len; ++j)
            acc[i][j] = ids[static_cast<std::size_t>(i * seq_len + j)];
    return d;
}

TokenData load_text_windows(const std::string& text_path, const std::string& tokenizer_path,
                            int64_t seq_len, int64_t max_seqs) {
    return load_text_windows(text_path, Tokenizer(tokenizer_path), seq_len, max_seqs);
}

TokenData load_eval_data(const std::string& path, const std::string& model_dir, int64_t seq_len,
                         int64_t max_seqs, int threads) {
    const std::string ext = ".safetensors";
    if (path.size() >= ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0)
        return load_token_dataset(path, max_seqs);
    try {
        Tokenizer tok = Tokenizer::for_model(model_dir);
        tok.set_threads(threads);
        return load_text_windows(path, tok, seq_len, max_seqs);
    } catch (const IoError& e) {
        throw IoError(std::string(e.what()) +
                      " (text data needs the model's tokenizer; without "
                      "one, pass a token dataset: .safetensors with an integer 'tokens' [n, L])");
    }
}

}  // namespace rq::io
