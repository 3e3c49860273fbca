// Pipeline stages run alone: a model cut into stages, chained by hand (boundary activations
// forward, boundary gradients backward), gives the whole model's loss and weight gradients
// bit for bit, and the loader reads only each stage's tensors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "../common/shared_dir.h"
#include "requant/error.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/llama.h"
#include "tiny_model.h"

namespace rq::model {
namespace {

struct Grads {
    double                  loss = 0;
    std::vector<at::Tensor> grads;  // layer-major, kLinears order
};

// Runs stages [cuts[i], cuts[i+1]) in sequence for one batch, then backward in reverse.
Grads run_split(const io::HfCheckpoint& ckpt, const std::vector<int64_t>& cuts,
                const at::Tensor& tok) {
    const auto&        c = ckpt.config();
    std::vector<Stage> stages;
    for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
        StageRange r{cuts[i], cuts[i + 1], i == 0, i + 2 == cuts.size()};
        stages.emplace_back(c, load_stage_weights(ckpt, r, at::kFloat), tok.size(1));
        enable_linear_grads(stages.back().weights());
    }
    std::vector<at::Tensor> ins, outs;
    at::Tensor              x = tok;
    for (auto& s : stages) {
        if (!ins.empty()) {
            x = x.detach();  // what crosses a rank boundary: plain values
            x.set_requires_grad(true);
        }
        ins.push_back(x);
        outs.push_back(s.forward(x, tok));
        x = outs.back();
    }
    Grads g;
    g.loss       = outs.back().mean().item<double>();
    at::Tensor d = at::scalar_tensor(1.0 / outs.back().numel());
    for (std::size_t i = stages.size(); i-- > 0;) d = stage_backward(ins[i], outs[i], d);
    EXPECT_FALSE(d.defined()) << "the first stage has no input gradient";
    for (auto& s : stages)
        for (auto& lw : s.weights().layers)
            for (Linear l : kLinears) g.grads.push_back(lw.linear(l).grad());
    return g;
}

TEST(Stage, SplitEqualsWholeBitwiseStories260k) {
    io::HfCheckpoint ckpt(test::shared_path("models/stories260k"));
    io::TokenData    d =
        io::load_token_dataset(test::shared_path("models/stories260k/calib-tokens.safetensors"), 4);
    const Grads whole = run_split(ckpt, {0, 5}, d.tokens);
    for (const auto& cuts :
         std::vector<std::vector<int64_t>>{{0, 2, 5}, {0, 1, 3, 5}, {0, 0, 5, 5}}) {
        const Grads split = run_split(ckpt, cuts, d.tokens);
        EXPECT_EQ(split.loss, whole.loss);
        ASSERT_EQ(split.grads.size(), whole.grads.size());
        for (std::size_t i = 0; i < whole.grads.size(); ++i)
            EXPECT_TRUE(at::equal(split.grads[i], whole.grads[i])) << "gradient " << i;
    }
}

TEST(Stage, LoadsOnlyItsOwnTensors) {
    io::HfCheckpoint ckpt(test::shared_path("models/llama3-tiny-random"));
    StageWeights     w = load_stage_weights(ckpt, {1, 2, false, false}, at::kFloat);
    EXPECT_FALSE(w.tok_embd.defined());
    EXPECT_FALSE(w.head.defined());
    ASSERT_EQ(w.layers.size(), 1u);
    EXPECT_EQ(ckpt.used().size(), 9u);  // 7 linears + 2 norms of layer 1
    for (const auto& n : ckpt.used()) EXPECT_NE(n.find("model.layers.1."), std::string::npos) << n;
}

TEST(Stage, LastStageOfTiedModelLoadsEmbeddingAsHead) {
    io::HfCheckpoint ckpt(test::shared_path("models/stories260k"));
    StageWeights     w = load_stage_weights(ckpt, {3, 5, false, true}, at::kFloat);
    ASSERT_TRUE(w.head.defined());
    EXPECT_EQ(w.head.sizes(), (std::vector<int64_t>{512, 64}));
    EXPECT_TRUE(ckpt.used().count("model.embed_tokens.weight"));
}

TEST(Stage, RejectsLayersOutsideTheModel) {
    io::HfCheckpoint ckpt(test::shared_path("models/stories260k"));
    EXPECT_THROW(load_stage_weights(ckpt, {4, 6, false, true}, at::kFloat), ConfigError);
}

TEST(Stage, SequenceLongerThanRopeTableIsAnError) {
    const auto c = test::tiny_config(true);
    Stage      s(c, random_stage_weights(c, whole_model(c), at::kFloat, 1), 8);
    at::Tensor tok = test::tiny_tokens(c, 1, 9, 1);
    EXPECT_THROW(s.forward(tok, tok), ConfigError);
}

TEST(Stage, RandomWeightsAgreeAcrossSplits) {
    const auto   c     = test::tiny_config(false);
    StageWeights whole = random_stage_weights(c, whole_model(c), at::kFloat, 5);
    StageWeights tail  = random_stage_weights(c, {2, 3, false, true}, at::kFloat, 5);
    EXPECT_TRUE(at::equal(whole.layers[2].w_down, tail.layers[0].w_down));
    EXPECT_TRUE(at::equal(whole.head, tail.head));
}

}  // namespace
}  // namespace rq::model
