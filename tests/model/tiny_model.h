#pragma once
#include <ATen/ATen.h>

#include "requant/io/hf_config.h"

// A tiny random Llama for gradient and stage tests: GQA, llama3 rope scaling, odd sizes.

namespace rq::test {

inline io::LlamaConfig tiny_config(bool tied) {
    io::LlamaConfig c;
    c.n_vocab                    = 37;
    c.n_embd                     = 24;
    c.n_ff                       = 40;
    c.n_layer                    = 3;
    c.n_head                     = 4;
    c.n_head_kv                  = 2;
    c.head_dim                   = 6;
    c.n_ctx_train                = 64;
    c.rms_norm_eps               = 1e-5;
    c.rope_theta                 = 500000.0;
    c.rope.type                  = "llama3";
    c.rope.factor                = 8.0;
    c.rope.low_freq_factor       = 1.0;
    c.rope.high_freq_factor      = 4.0;
    c.rope.original_max_position = 16;
    c.tie_word_embeddings        = tied;
    return c;
}

inline at::Tensor tiny_tokens(const io::LlamaConfig& c, int64_t B, int64_t T, uint64_t seed) {
    at::Generator g = at::detail::createCPUGenerator(seed);
    return at::randint(0, c.n_vocab, {B, T}, g, at::kLong);
}

}  // namespace rq::test
