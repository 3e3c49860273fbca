// Stage partitioning from config.json alone: contiguous, complete, at least one layer per
// stage, ends owning embedding and head, balanced by cost, and clear refusals.
#include <gtest/gtest.h>

#include "../common/shared_dir.h"
#include "requant/error.h"
#include "requant/io/hf_config.h"
#include "requant/parallel/partition.h"

namespace rq::parallel {
namespace {

io::LlamaConfig config(const std::string& model) {
    return io::load_llama_config(test::shared_path("models/" + model + "/config.json"));
}

TEST(Partition, ContiguousCompleteAndOwnershipAtTheEnds) {
    for (const char* m : {"llama-7m-en", "stories260k", "llama3-tiny-random"}) {
        const auto c = config(m);
        for (int P = 1; P <= c.n_layer; ++P) {
            const auto plan = plan_pipeline(c, P, 256);
            ASSERT_EQ(int(plan.stages.size()), P);
            int64_t next = 0;
            for (int r = 0; r < P; ++r) {
                const auto& s = plan.stages[std::size_t(r)].range;
                EXPECT_EQ(s.layer_begin, next) << m << " P=" << P << " rank " << r;
                EXPECT_GT(s.layer_end, s.layer_begin) << "every stage holds a layer";
                EXPECT_EQ(s.first, r == 0);
                EXPECT_EQ(s.last, r == P - 1);
                next = s.layer_end;
            }
            EXPECT_EQ(next, c.n_layer);
        }
    }
}

TEST(Partition, BalancesBetterThanEqualLayerCounts) {
    // The head (V x C) is heavy on llama-7m-en: an equal split of layers overloads the last rank.
    const auto c    = config("llama-7m-en");
    const auto plan = plan_pipeline(c, 4, 256);
    EXPECT_LE(plan.stages.back().range.layer_end - plan.stages.back().range.layer_begin, 2);
    double naive_max = 0, naive_sum = 0;
    for (int r = 0; r < 4; ++r) {
        double cost = 0;
        for (const auto& s : plan_pipeline(c, 8, 256).stages)
            if (s.range.layer_begin >= 2 * r && s.range.layer_end <= 2 * r + 2) cost += s.cost;
        naive_max = std::max(naive_max, cost), naive_sum += cost;
    }
    EXPECT_LT(plan.imbalance(), naive_max / (naive_sum / 4));
}

TEST(Partition, OneRankIsTheWholeModel) {
    const auto plan = plan_pipeline(config("stories260k"), 1, 256);
    ASSERT_EQ(plan.stages.size(), 1u);
    EXPECT_TRUE(plan.stages[0].range.first && plan.stages[0].range.last);
    EXPECT_EQ(plan.stages[0].range.layer_end, 5);
    EXPECT_DOUBLE_EQ(plan.imbalance(), 1.0);
}

TEST(Partition, RefusesMoreRanksThanLayers) {
    EXPECT_THROW(plan_pipeline(config("llama3-tiny-random"), 4, 256), ConfigError);
    EXPECT_THROW(plan_pipeline(config("llama3-tiny-random"), 0, 256), ConfigError);
}

TEST(Partition, FormatNamesEveryRank) {
    const std::string s = format_plan(plan_pipeline(config("llama-7m-en"), 3, 256));
    EXPECT_NE(s.find("3 stages"), std::string::npos);
    EXPECT_NE(s.find("\n     2  ["), std::string::npos) << s;
}

}  // namespace
}  // namespace rq::parallel
