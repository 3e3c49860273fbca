// Loss evaluation (requant/model/evaluate.h).
#include "requant/model/evaluate.h"

#include <ATen/ATen.h>

#include <cmath>

#include "requant/error.h"

namespace rq::model {

double EvalResult::perplexity() const {
    return std::exp(mean_loss());
}

void check_token_ids(const at::Tensor& tokens, int64_t n_vocab, const std::string& source) {
    const int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
    if (lo < 0 || hi >= n_vocab)
        throw ShapeError(source + ": token id " + std::to_string(lo < 0 ? lo : hi) +
                         " is outside the model's vocabulary [0, " + std::to_string(n_vocab) + ")");
}

EvalResult evaluate(const Stage& model, const at::Tensor& tokens, int64_t batch,
                    const std::function<void(int64_t)>& on_batch) {
    if (!model.range().first || !model.range().last)
        throw ConfigError("evaluate() needs the whole model in one stage");
    at::NoGradGuard no_grad;
    EvalResult      r;
    const int64_t   N = tokens.size(0);
    for (int64_t i = 0; i < N; i += batch) {
        const int64_t b   = std::min(batch, N - i);
        at::Tensor    tok = tokens.narrow(0, i, b);
        at::Tensor    l   = model.forward(tok, tok);  // [b, T-1]
        r.loss_sum += l.to(at::kDouble).sum().item<double>();
        r.n_predicted += l.numel();
        r.n_seqs += b;
        if (on_batch) on_batch(r.n_seqs);
    }
    return r;
}

}  // namespace rq::model
