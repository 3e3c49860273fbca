// Exactness against the bundled references (../shared/models/*/reference.safetensors and the
// losses in REFERENCE.md): logits within 1e-4 absolute, losses within 1e-4 relative.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>

#include "../common/shared_dir.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/io/safetensors.h"
#include "requant/model/evaluate.h"
#include "requant/model/llama.h"

namespace rq::model {
namespace {

constexpr double kLogitTol = 1e-4;  // absolute, DESIGN.md §7
constexpr double kLossRel  = 1e-4;  // relative, "4 significant digits"

Stage load_model(const std::string& name, int64_t max_t) {
    io::HfCheckpoint ckpt(test::shared_path("models/" + name));
    return Stage(ckpt.config(), load_stage_weights(ckpt, whole_model(ckpt.config()), at::kFloat),
                 max_t);
}

// llm.c-style check: the first values, then the max difference.
double report_maxdiff(const char* what, const at::Tensor& got, const at::Tensor& want) {
    const double  md = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
    const int64_t n  = std::min<int64_t>(5, got.numel());
    auto          g = got.flatten().to(at::kDouble), w = want.flatten().to(at::kDouble);
    std::printf("%-28s got ", what);
    for (int64_t i = 0; i < n; ++i) std::printf(" %10.6f", g[i].item<double>());
    std::printf("\n%-28s want", "");
    for (int64_t i = 0; i < n; ++i) std::printf(" %10.6f", w[i].item<double>());
    std::printf("  maxdiff %.3g\n", md);
    return md;
}

void check_reference(const std::string& name) {
    io::SafetensorsFile ref(test::shared_path("models/" + name + "/reference.safetensors"));
    at::Tensor          tokens = ref.load("tokens", at::kLong);               // [4, T]
    at::Tensor          logits = ref.load("logits", at::kFloat);              // [4, T, V]
    at::Tensor          losses = ref.load("loss_per_sequence", at::kDouble);  // [4]
    Stage               m      = load_model(name, tokens.size(1));
    at::NoGradGuard     g;
    at::Tensor          got = m.forward_logits(tokens);
    EXPECT_LE(report_maxdiff((name + " logits").c_str(), got, logits), kLogitTol);
    at::Tensor per_seq = m.forward(tokens, tokens).to(at::kDouble).mean(1);  // [4]
    report_maxdiff((name + " loss/seq").c_str(), per_seq, losses);
    for (int64_t i = 0; i < 4; ++i)
        EXPECT_NEAR(per_seq[i].item<double>(), losses[i].item<double>(),
                    kLossRel * losses[i].item<double>())
            << name << " sequence " << i;
}

void check_loss(const std::string& model, const std::string& data, int64_t max_seqs,
                double want_loss, double want_ppl) {
    io::HfCheckpoint ckpt(test::shared_path("models/" + model));
    io::TokenData    d = io::load_eval_data(test::shared_path(data), ckpt.dir(), 256, max_seqs);
    Stage m(ckpt.config(), load_stage_weights(ckpt, whole_model(ckpt.config()), at::kFloat),
            d.tokens.size(1));
    const EvalResult r = evaluate(m, d.tokens, 8);
    std::printf("%s on %s (%lld seqs): loss %.6f (want %.6f)  ppl %.4f (want %.4f)\n",
                model.c_str(), data.c_str(), (long long)r.n_seqs, r.mean_loss(), want_loss,
                r.perplexity(), want_ppl);
    EXPECT_NEAR(r.mean_loss(), want_loss, kLossRel * want_loss);
    EXPECT_NEAR(r.perplexity(), want_ppl, kLossRel * want_ppl);
}

TEST(Exactness, Llama7mLogits) {
    check_reference("llama-7m-en");
}
TEST(Exactness, Stories260kLogits) {
    check_reference("stories260k");
}
TEST(Exactness, Llama3TinyRandomLogits) {
    check_reference("llama3-tiny-random");
}

TEST(Exactness, Stories260kPerplexity) {
    check_loss("stories260k", "models/stories260k/eval-tokens.safetensors", -1, 2.858844, 17.4413);
    check_loss("stories260k", "models/stories260k/calib-tokens.safetensors", -1, 2.887033, 17.9400);
}

// REFERENCE.md's "first 64 windows" rows. The all-window rows take minutes on 2 cores and run
// in launch/check-reference.sh.
TEST(Exactness, Llama7mPerplexityFirst64) {
    check_loss("llama-7m-en", "data/sotu-1981-2021.txt", 64, 4.492829, 89.3739);
    check_loss("llama-7m-en", "data/mobydick.txt", 64, 5.141365, 170.9489);
    check_loss("llama-7m-en", "data/sotu-1790-1980.txt", 64, 4.010465, 55.1725);
}

}  // namespace
}  // namespace rq::model
