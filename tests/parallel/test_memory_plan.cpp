// `requant-dist plan` memory estimate (requant/parallel/memory_plan.h): each rank's weights are
// 4 bytes per parameter it holds, more ranks never raise the largest rank's weights, detach, the
// Fisher diagonal and GPTQ add exactly their documented buffers (counted here from the layer
// shapes, not from the plan), activations scale with the microbatch, ranks_for_memory returns the
// least rank count that fits, and the printed table has every rank with its total. Uses Llama
// 3.2 1B's config.json (jobs/configs) and the bundled llama-7m-en; no weights are read.
// Legend: V vocab, C n_embd, F n_ff, H n_head, Hkv n_head_kv, D head_dim, L_r layers of rank r.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "../common/shared_dir.h"
#include "requant/io/hf_config.h"
#include "requant/io/job.h"
#include "requant/model/attention.h"
#include "requant/parallel/memory_plan.h"
#include "requant/units.h"

namespace rq::parallel {
namespace {

// The two required keys; the paths are only named, never opened.
const std::string kMinimal = R"([model]
path = "models/m"
[data]
calibration = "calib.txt"
)";

// A job file location that need not exist.
const std::string kOrigin =
    (std::filesystem::temp_directory_path() / "rq-memory-plan-test" / "job.toml").string();

const std::vector<std::string> kDetach = {"requant.significant_ratio=0.0005",
                                          "requant.significant_select=pqi"};

io::Job job(const std::vector<std::string>& sets = {}) {
    return io::parse_job(kMinimal, kOrigin, sets);
}

// Llama 3.2 1B (tied embeddings, 16 layers), from the jobs folder beside this checkout.
io::LlamaConfig llama_1b() {
    const auto root = std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
    return io::load_llama_config((root / "jobs" / "configs" / "llama-3.2-1b.json").string());
}

io::LlamaConfig llama_7m() {
    return io::load_llama_config(test::shared_path("models/llama-7m-en/config.json"));
}

// llama-7m-en with its own LM head: the untied case.
io::LlamaConfig llama_7m_untied() {
    io::LlamaConfig c     = llama_7m();
    c.tie_word_embeddings = false;
    return c;
}

struct Named {
    const char*     name;
    io::LlamaConfig c;
};
std::vector<Named> configs() {
    return {{"llama-3.2-1b", llama_1b()},
            {"llama-7m-en", llama_7m()},
            {"llama-7m-en untied", llama_7m_untied()}};
}

// Elements of one layer's seven linear weights, from their shapes:
// q [H*D, C], k [Hkv*D, C], v [Hkv*D, C], o [C, H*D], gate [F, C], up [F, C], down [C, F].
double linear_elems(const io::LlamaConfig& c) {
    const double C = double(c.n_embd), F = double(c.n_ff);
    const double q = double(c.n_head * c.head_dim), kv = double(c.n_head_kv * c.head_dim);
    return q * C + 2 * kv * C + C * q + 2 * F * C + C * F;
}

// Parameters rank r's stage holds as tensors: its layers (linears and two norms), the embedding
// [V, C] on the first, the final norm [C] and the head [V, C] on the last. A tied head is the
// embedding tensor itself when one stage holds both (load_stage_weights), else a copy.
double held_params(const io::LlamaConfig& c, const model::StageRange& s) {
    const double C = double(c.n_embd), V = double(c.n_vocab);
    double       n = double(s.layer_end - s.layer_begin) * (linear_elems(c) + 2 * C);
    if (s.first) n += V * C;
    if (s.last) n += C + (c.tie_word_embeddings && s.first ? 0 : V * C);
    return n;
}

double layers_of(const StagePlan& s) {
    return double(s.range.layer_end - s.range.layer_begin);
}

double max_weights(const MemoryPlan& p) {
    double m = 0;
    for (const auto& r : p.ranks) m = std::max(m, r.weights);
    return m;
}

TEST(MemoryPlan, WeightsAreFourBytesPerHeldParameter) {
    for (const auto& [name, c] : configs())
        for (int P = 1; P <= c.n_layer; ++P) {
            const MemoryPlan p = plan_memory(c, job(), P);
            ASSERT_EQ(p.ranks.size(), std::size_t(P));
            ASSERT_EQ(p.pipeline.stages.size(), std::size_t(P));
            double sum = 0, held_sum = 0;
            for (int r = 0; r < P; ++r) {
                const double held = held_params(c, p.pipeline.stages[std::size_t(r)].range);
                EXPECT_NEAR(p.ranks[std::size_t(r)].weights, 4 * held, 1e-9 * 4 * held)
                    << name << " P=" << P << " rank " << r << ": " << held << " parameters held";
                sum += p.ranks[std::size_t(r)].weights, held_sum += held;
            }
            // One process holds exactly n_params (a tied embedding once); split, the last rank
            // adds a copy of a tied embedding, and nothing else is repeated.
            const double copies =
                P > 1 && c.tie_word_embeddings ? double(c.n_vocab * c.n_embd) : 0.0;
            EXPECT_NEAR(sum, 4.0 * (double(io::n_params(c)) + copies), 1e-9 * sum)
                << name << " P=" << P;
            EXPECT_NEAR(held_sum, double(io::n_params(c)) + copies, 1e-9 * held_sum) << name;
        }
}

TEST(MemoryPlan, MoreRanksNeverRaiseTheLargestRanksWeights) {
    for (const auto& [name, c] : configs()) {
        double prev = max_weights(plan_memory(c, job(), 1));
        for (int P = 2; P <= c.n_layer; ++P) {
            const double cur = max_weights(plan_memory(c, job(), P));
            EXPECT_LE(cur, prev) << name << ": P=" << P << " vs P=" << P - 1;
            prev = cur;
        }
    }
}

TEST(MemoryPlan, RtnWithoutRequantHasNoExtraBuffers) {
    const auto       c = llama_1b();
    const MemoryPlan p = plan_memory(c, job(), 4);
    for (std::size_t r = 0; r < p.ranks.size(); ++r) {
        EXPECT_EQ(p.ranks[r].w_orig, 0.0) << "rank " << r;
        EXPECT_EQ(p.ranks[r].stats(), 0.0) << "rank " << r;
        EXPECT_EQ(p.ranks[r].pqi, 0.0) << "rank " << r;
        EXPECT_GT(p.ranks[r].activations, 0.0) << "rank " << r;
        EXPECT_DOUBLE_EQ(p.ranks[r].total(),
                         p.ranks[r].runtime + p.ranks[r].weights + p.ranks[r].activations);
    }
}

// Detach adds the mapped originals (in the stored dtype), gradients and accumulators; the
// peak takes the larger of the statistics phase and the detach phase.
TEST(MemoryPlan, PqiDetachAddsOriginalLinearsAndPqiAccumulators) {
    for (const auto& [name, c] : configs())
        for (int P : {1, 2, 3}) {
            const io::Job det = job(kDetach);
            ASSERT_TRUE(det.requant.detaches());
            const MemoryPlan base = plan_memory(c, job(), P), d = plan_memory(c, det, P);
            ASSERT_EQ(d.ranks.size(), std::size_t(P));
            for (int r = 0; r < P; ++r) {
                const auto&  b   = base.ranks[std::size_t(r)];
                const auto&  m   = d.ranks[std::size_t(r)];
                const double lin = linear_elems(c) * layers_of(d.pipeline.stages[std::size_t(r)]);
                const std::string at =
                    std::string(name) + " P=" + std::to_string(P) + " rank " + std::to_string(r);
                EXPECT_DOUBLE_EQ(m.weights, b.weights) << at;
                EXPECT_DOUBLE_EQ(m.activations, b.activations) << at;
                EXPECT_DOUBLE_EQ(m.stats(), b.stats()) << at;
                const double stored = c.torch_dtype == "float32" ? 4 : 2;
                const double parts  = (det.quant.bits + 32.0 / det.quant.group_size) / 8;
                EXPECT_NEAR(m.w_orig, (stored + parts) * lin, 1e-9 * lin)
                    << at << ": the linears as stored (" << c.torch_dtype
                    << "), mapped, and their quantized parts";
                EXPECT_NEAR(m.pqi, (4 + 4) * lin, 1e-9 * lin)
                    << at << ": fp32 gradient and accumulator per linear weight";
                EXPECT_DOUBLE_EQ(m.total(), b.total() + m.w_orig + m.pqi) << at;
            }
        }
}

TEST(MemoryPlan, SqueezeLlmAddsFisherDiagonalAndGradients) {
    for (const auto& [name, c] : configs()) {
        const int        P    = 2;
        const MemoryPlan base = plan_memory(c, job(), P);
        const MemoryPlan s    = plan_memory(c, job({"quant.method=squeezellm"}), P);
        for (int r = 0; r < P; ++r) {
            const auto&  b   = base.ranks[std::size_t(r)];
            const auto&  m   = s.ranks[std::size_t(r)];
            const double lin = linear_elems(c) * layers_of(s.pipeline.stages[std::size_t(r)]);
            EXPECT_DOUBLE_EQ(m.weights, b.weights) << name << " rank " << r;
            EXPECT_EQ(m.w_orig, 0.0) << name << " rank " << r << ": no detach";
            EXPECT_NEAR(m.stats(), (4 + 4) * lin, 1e-9 * lin)
                << name << " rank " << r << ": fp32 Fisher diagonal + gradients per weight";
            EXPECT_EQ(m.pqi, 0.0) << name << " rank " << r << ": no detach";
            EXPECT_DOUBLE_EQ(m.total(), b.total() + m.stats()) << name << " rank " << r;
        }
    }
}

TEST(MemoryPlan, AwqBlockLossAddsOneLayersRowsAndGrowsWithCalibration) {
    for (const auto& [name, c] : configs()) {
        const MemoryPlan lin =
            plan_memory(c, job({"quant.method=awq", "quant.awq_loss=linear"}), 2);
        const MemoryPlan blk = plan_memory(c, job({"quant.method=awq"}), 2);
        const MemoryPlan big =
            plan_memory(c, job({"quant.method=awq", "data.calibration_seqs=256"}), 2);
        for (std::size_t r = 0; r < 2; ++r) {
            const double rows = double(job().data.calibration_seqs) * double(job().data.seq_len);
            // at least the layer's inputs and outputs and its two block inputs, fp32 [N, T, C]
            EXPECT_GE(blk.ranks[r].stats() - lin.ranks[r].stats(), 4 * 4 * rows * double(c.n_embd))
                << name << " rank " << r;
            EXPECT_GT(big.ranks[r].stats(), blk.ranks[r].stats()) << name << " rank " << r;
        }
    }
}

TEST(MemoryPlan, GptqAddsXtxPerLinearInput) {
    const auto   c = llama_1b();
    const int    P = 4;
    const double C = double(c.n_embd), F = double(c.n_ff), HD = double(c.n_head * c.head_dim);
    // One X^T X per linear input of a layer, fp64: q/k/v [C, C], o [HD, HD], gate/up [C, C],
    // down [F, F].
    const double per_layer = 8 * (C * C + HD * HD + C * C + F * F);
    // GPTQ's fp64 workspace on the widest linear (down_proj, I = F): two [F, F], W and Q.
    const double     work = 8 * (2 * F * F + 2 * C * F);
    const MemoryPlan seq  = plan_memory(c, job({"quant.method=gptq"}), P);
    const MemoryPlan all  = plan_memory(c, job({"quant.method=gptq", "quant.sequential=false"}), P);
    for (int r = 0; r < P; ++r) {
        const double L = layers_of(seq.pipeline.stages[std::size_t(r)]);
        EXPECT_NEAR(seq.ranks[std::size_t(r)].stats(), per_layer + work, 1e-9 * per_layer)
            << "rank " << r << ": sequential GPTQ holds one layer's Hessians";
        EXPECT_NEAR(all.ranks[std::size_t(r)].stats(), per_layer * L + work, 1e-9 * per_layer * L)
            << "rank " << r << ": every layer of the stage at once";
        EXPECT_EQ(seq.ranks[std::size_t(r)].pqi, 0.0) << "rank " << r;
    }
}

// Under run.mem_gib, non-sequential GPTQ collects X^T X in the fewest passes (a group of
// layers each) that fit; the passes are the same on every rank, and a job that cannot use
// them (sequential, Alg. 1's search) keeps one.
TEST(MemoryPlan, GptqStatisticsInPassesFitTheBudget) {
    const auto                     c    = llama_1b();
    const int                      P    = 2;
    const std::vector<std::string> base = {"quant.method=gptq", "quant.sequential=false"};
    const MemoryPlan               all  = plan_memory(c, job(base), P);
    double most = 0, fits_one = 0;  // all layers at once; one layer, one microbatch
    for (const auto& m : all.ranks) {
        most           = std::max(most, m.total());
        RankMemory one = m;
        one.xtx_layers = 1;
        fits_one = std::max(fits_one, one.weights + one.per_micro + one.transient + one.stats());
    }
    EXPECT_EQ(all.stats_passes, 1);
    for (double gib : {most / kGiB + 0.01, (most + fits_one) / 2 / kGiB, fits_one / kGiB + 0.01}) {
        auto sets = base;
        sets.push_back("run.mem_gib=" + std::to_string(gib));
        const MemoryPlan p = plan_memory(c, job(sets), P);
        ASSERT_GE(p.stats_passes, 1);
        for (std::size_t r = 0; r < p.ranks.size(); ++r) {
            const auto&   range = p.pipeline.stages[r].range;
            const int64_t L     = range.layer_end - range.layer_begin;
            EXPECT_EQ(p.ranks[r].xtx_layers, (L + p.stats_passes - 1) / p.stats_passes);
            const auto& m = p.ranks[r];
            EXPECT_LE(m.weights + m.per_micro + m.transient + m.stats(), gib * kGiB)
                << gib << " GiB, rank " << r << ": the statistics phase";
        }
        if (p.stats_passes > 1) {  // one pass fewer would not fit on some rank
            bool over = false;
            for (std::size_t r = 0; r < p.ranks.size(); ++r) {
                RankMemory m = p.ranks[r];
                m.xtx_layers = layers_per_pass(p.pipeline.stages[r].range, p.stats_passes - 1);
                over = over || m.weights + m.per_micro + m.transient + m.stats() > gib * kGiB;
            }
            EXPECT_TRUE(over) << gib << " GiB: " << p.stats_passes << " passes";
        }
    }
    auto tight = base;
    tight.push_back("run.mem_gib=" + std::to_string(fits_one / kGiB + 0.01));
    EXPECT_GT(plan_memory(c, job(tight), P).stats_passes, 1);
    tight[1] = "quant.sequential=true";
    EXPECT_EQ(plan_memory(c, job(tight), P).stats_passes, 1);
    EXPECT_FALSE(
        stats_in_passes(job({"quant.method=gptq", "quant.sequential=false",
                             "requant.outlier_ratio=0.005", "requant.outlier_select=adaptive"})));
    EXPECT_TRUE(stats_in_passes(job(base)));
}

// What a microbatch in flight keeps scales with its sequences; the replay's attention block and
// loss chunk are capped, so the whole grows, but less than twice.
TEST(MemoryPlan, ActivationsScaleWithMicrobatch) {
    const auto       c  = llama_1b();
    const MemoryPlan m4 = plan_memory(c, job({"run.microbatch=4"}), 3);
    const MemoryPlan m8 = plan_memory(c, job({"run.microbatch=8"}), 3);
    for (std::size_t r = 0; r < 3; ++r) {
        EXPECT_NEAR(m8.ranks[r].per_micro, 2 * m4.ranks[r].per_micro, 1e-9 * m8.ranks[r].per_micro)
            << "rank " << r;
        EXPECT_GT(m8.ranks[r].activations, m4.ranks[r].activations) << "rank " << r;
        EXPECT_LE(m8.ranks[r].activations, 2 * m4.ranks[r].activations) << "rank " << r;
        EXPECT_DOUBLE_EQ(m8.ranks[r].weights, m4.ranks[r].weights) << "rank " << r;
    }
}

// Kept graphs hold every layer's saved internals per microbatch in flight (the replay's
// per-layer share times the stage's layers, and the head's input on the last stage): more than
// recomputing, by exactly that, and in proportion to the layers a rank holds.
TEST(MemoryPlan, KeptGraphsAddEveryLayersInternalsPerMicrobatchInFlight) {
    const auto       c         = llama_1b();
    const MemoryPlan p         = plan_memory(c, job({"run.microbatch=4"}), 3);
    const double     T         = double(job().data.seq_len);
    const double     per_layer = 4 * 4 * T * (10 * double(c.n_embd) + 4 * double(c.n_ff)) +
                             double(model::attention_kept_bytes(4, c.n_head, int64_t(T)));
    for (std::size_t r = 0; r < 3; ++r) {
        const RankMemory& m    = p.ranks[r];
        const auto&       s    = p.pipeline.stages[r].range;
        const double      head = s.last ? 4 * 4 * T * double(c.n_embd) : 0;
        EXPECT_DOUBLE_EQ(m.graph_per_micro, per_layer * double(s.layer_end - s.layer_begin) + head)
            << "rank " << r;
        EXPECT_DOUBLE_EQ(m.total_keeping_graph(),
                         m.total() + m.graph_per_micro * double(m.in_flight))
            << "rank " << r;
    }
}

// run.mem_gib caps the microbatches in flight: one cap for every rank (the schedule needs it),
// never above 1F1B's P - r, every rank within the budget whenever one microbatch in flight
// fits, and a larger budget never lowers the cap.
TEST(MemoryPlan, MemGibCapsInFlightWithinBudget) {
    const auto       c         = llama_1b();
    const int        P         = 8;
    const MemoryPlan free_plan = plan_memory(c, job({"data.seq_len=2048", "run.microbatch=8"}), P);
    double           floor_b   = 0;  // the least budget with one microbatch in flight
    for (const auto& m : free_plan.ranks)
        floor_b = std::max(floor_b, m.total() - m.per_micro * double(m.in_flight - 1));
    int64_t last_cap = 0;
    for (double f : {1.0, 1.02, 1.1, 1.3, 2.0}) {
        const double gib = floor_b * f / kGiB;
        const auto   j =
            job({"data.seq_len=2048", "run.microbatch=8", "run.mem_gib=" + std::to_string(gib)});
        const auto    p   = plan_memory(c, j, P);
        const int64_t cap = p.ranks[0].in_flight;
        EXPECT_GE(cap, 1);
        EXPECT_GE(cap, last_cap) << gib << " GiB";
        last_cap = cap;
        for (int r = 0; r < P; ++r) {
            const auto& m = p.ranks[std::size_t(r)];
            EXPECT_EQ(m.in_flight, std::min<int64_t>(P - r, cap)) << "rank " << r;
            EXPECT_LE(m.total(), j.run.mem_gib * kGiB * (1 + 1e-6)) << "rank " << r;
        }
    }
    EXPECT_GT(last_cap, 1) << "twice the floor holds more than one microbatch";
}

TEST(MemoryPlan, RanksForMemoryIsTheLeastCountThatFits) {
    for (const auto& [name, c] : configs())
        for (const auto& sets : {std::vector<std::string>{}, kDetach}) {
            const io::Job       j = job(sets);
            std::vector<double> max_gib(std::size_t(c.n_layer) + 1);
            for (int P = 1; P <= c.n_layer; ++P)
                max_gib[std::size_t(P)] = plan_memory(c, j, P).max_total() / kGiB;
            const double least = *std::min_element(max_gib.begin() + 1, max_gib.end());
            // Budgets exactly at each plan's peak (kGiB is a power of two: exact round trip).
            for (int P = 1; P <= c.n_layer; ++P) {
                const double gib = max_gib[std::size_t(P)];
                const int    got = ranks_for_memory(c, j, gib);
                ASSERT_GE(got, 1) << name << ": " << gib << " GiB fits P=" << P;
                EXPECT_LE(got, P) << name << ": " << gib << " GiB";
                EXPECT_LE(max_gib[std::size_t(got)], gib) << name << ": P=" << got;
                for (int Q = 1; Q < got; ++Q)
                    EXPECT_GT(max_gib[std::size_t(Q)], gib)
                        << name << ": P=" << Q << " fits " << gib << " GiB but " << got
                        << " was returned";
            }
            EXPECT_EQ(ranks_for_memory(c, j, 2 * max_gib[1]), 1) << name;
            EXPECT_EQ(ranks_for_memory(c, j, 0.999 * least), 0)
                << name << ": no rank count fits below " << least << " GiB";
        }
}

TEST(MemoryPlan, FormatHasEveryRankWithItsTotal) {
    const auto c = llama_1b();
    for (int P : {1, 3, 5}) {
        const MemoryPlan  p = plan_memory(c, job(kDetach), P);
        const std::string s = format_memory_plan(p, c);
        EXPECT_NE(s.find(std::to_string(c.n_layer) + " layers on " + std::to_string(P) + " ranks"),
                  std::string::npos)
            << s;
        // The memory table: a header naming "total GiB", then one row per rank.
        std::istringstream in(s);
        std::string        line;
        while (std::getline(in, line) && line.find("total GiB") == std::string::npos) {
        }
        ASSERT_FALSE(in.eof()) << "no memory table header in\n" << s;
        std::vector<bool> seen(std::size_t(P), false);
        for (int k = 0; k < P; ++k) {
            ASSERT_TRUE(std::getline(in, line)) << s;
            int    r = -1;
            double w = 0, o = 0, st = 0, q = 0, a = 0, rt = 0, t = 0;
            ASSERT_EQ(std::sscanf(line.c_str(), "%d %lf %lf %lf %lf %lf %lf %lf", &r, &w, &o, &st,
                                  &q, &a, &rt, &t),
                      8)
                << "row '" << line << "'";
            ASSERT_TRUE(r >= 0 && r < P) << line;
            seen[std::size_t(r)] = true;
            const auto& m        = p.ranks[std::size_t(r)];
            EXPECT_NEAR(t, m.total() / kGiB, 0.0051) << line;
            EXPECT_NEAR(w, m.weights / kGiB, 0.0051) << line;
            EXPECT_NEAR(a, m.activations / kGiB, 0.0051) << line;
            EXPECT_NEAR(rt, m.runtime / kGiB, 0.0051) << line;
        }
        for (int r = 0; r < P; ++r) EXPECT_TRUE(seen[std::size_t(r)]) << "rank " << r << "\n" << s;
    }
}

}  // namespace
}  // namespace rq::parallel
