// Alg. 2, step-wise significant-weight detach (requant/decompose/detach.h), on one process with
// stories260k quantized by RTN 3-bit g32 and a few outliers in one linear: the rounds, the count
// split over them, no outlier picked, W_hat = reconstruct(q) with the significant weights back
// to fp16 precision, the dense codes untouched, a resumed run equal to the uninterrupted one bit
// for bit, and the random ablation. Not tested here: PQI itself (tests/mpi/test_pqi_mpi.cpp)
// and rank independence (tests/mpi/test_requant_mpi.cpp).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../common/shared_dir.h"
#include "../common/solo_transport.h"
#include "requant/decompose/detach.h"
#include "requant/decompose/layer.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/quant/decomposed.h"
#include "requant/quant/sparse.h"

namespace rq::decompose {
namespace {

constexpr double      kSignificant = 0.001, kStep = 0.0005;   // K = 2 rounds
constexpr std::size_t kOutlierLayer = 1, kOutlierLinear = 6;  // layer 1 down_proj
constexpr int64_t     kOutliers = 20;
// See test_layer.cpp: the fp16 residual (|r| 2^-11, 2^-25 absolute) plus fp32 rounding.
constexpr double kHalfRel = 1.0 / 2048, kHalfAbs = 1.0 / (1 << 25), kFloatRel = 1.0 / (1 << 23);

// stories260k with every layer quantized, and what Alg. 2 starts from.
struct Quantized {
    io::HfCheckpoint ckpt{test::shared_path("models/stories260k")};
    model::Stage     stage{
        ckpt.config(),
        model::load_stage_weights(ckpt, model::whole_model(ckpt.config()), at::kFloat), 64};
    model::StageTensors     w_orig = stage_linears(stage);
    std::vector<LayerQuant> q;
    model::StageTensors     w_hat;  // dense + outliers, as Alg. 2 receives it

    explicit Quantized(int64_t n_outliers = kOutliers) {
        io::JobQuant p;
        p.method     = io::QuantMethod::Rtn;
        p.bits       = 3;
        p.group_size = 32;
        model::LayerTensors masks;  // undefined but for one linear
        masks[kOutlierLinear] =
            quant::topk_mask(w_orig[kOutlierLayer][kOutlierLinear].abs(), n_outliers);
        for (int64_t l = 0; l < stage.config().n_layer; ++l)
            q.push_back(quantize_layer(
                stage, l, LayerStats{},
                l == int64_t(kOutlierLayer) && n_outliers > 0 ? &masks : nullptr, nullptr, p));
        w_hat = stage_linears(stage);
    }
    int64_t n_weights() const {
        int64_t n = 0;
        for (const auto& l : w_orig)
            for (const auto& w : l) n += w.numel();
        return n;
    }
};

at::Tensor tokens() {
    return io::load_token_dataset(test::shared_path("models/stories260k/calib-tokens.safetensors"),
                                  2)
        .tokens.narrow(1, 0, 32)
        .contiguous();
}

io::JobRequant requant(io::SignificantSelect s) {
    io::JobRequant r;
    r.significant_ratio  = kSignificant;
    r.step_ratio         = kStep;
    r.significant_select = s;
    return r;
}

io::JobSensitivity pqi_opt() {
    io::JobSensitivity s;
    s.nodes = 2;
    return s;
}

struct Recorded {
    nlohmann::json                   report;
    std::vector<int>                 rounds_seen;
    std::vector<model::StageTensors> picks;  // per round
    std::vector<DetachRound>         records_after_round_1;
};

DetachHooks recording(Recorded& run) {
    DetachHooks h;
    h.on_round = [&run](int round, const model::StageTensors& pick,
                        const std::vector<DetachRound>& rounds) {
        run.rounds_seen.push_back(round);
        model::StageTensors copy(pick.size());
        for (std::size_t il = 0; il < pick.size(); ++il)
            for (std::size_t i = 0; i < model::kNumLinears; ++i) copy[il][i] = pick[il][i].clone();
        run.picks.push_back(copy);
        if (round == 1) run.records_after_round_1 = rounds;
    };
    return h;
}

int64_t count(const model::StageTensors& m) {
    int64_t n = 0;
    for (const auto& l : m)
        for (const auto& x : l)
            if (x.defined()) n += x.sum().item<int64_t>();
    return n;
}

bool csr_equal(const quant::SparseCsr& a, const quant::SparseCsr& b) {
    if (a.indptr.defined() != b.indptr.defined()) return false;
    if (!a.indptr.defined()) return true;
    return a.rows == b.rows && a.cols == b.cols && at::equal(a.indptr, b.indptr) &&
           at::equal(a.indices, b.indices) && at::equal(a.values, b.values);
}

std::string where(std::size_t il, std::size_t i) {
    return "layer " + std::to_string(il) + " " + model::linear_name(model::kLinears[i]);
}

// The properties every detach result has, whatever chose the weights.
void check_result(const Quantized& s, const std::vector<LayerQuant>& before,
                  const std::vector<LayerQuant>& q, const model::Stage& stage) {
    for (std::size_t il = 0; il < q.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const auto&      lq   = q[il][i];
            const at::Tensor w    = s.w_orig[il][i];
            const at::Tensor sig  = quant::csr_mask(lq.significant);
            const at::Tensor rec  = quant::reconstruct(lq);
            const at::Tensor live = stage.weights().layers[il].linear(model::kLinears[i]);
            EXPECT_TRUE(at::equal(live, rec)) << where(il, i) << ": stage is not reconstruct(q)";
            EXPECT_TRUE(at::equal(lq.dense.codes, before[il][i].dense.codes))
                << where(il, i) << ": dense codes refitted";
            EXPECT_TRUE(csr_equal(lq.outliers, before[il][i].outliers)) << where(il, i);
            if (lq.outliers.nnz() > 0) {
                EXPECT_EQ((quant::csr_mask(lq.outliers) & sig).sum().item<int64_t>(), 0)
                    << where(il, i) << ": an outlier was detached as significant";
            }
            // At the significant weights W_hat = w up to the fp16 residual; elsewhere untouched.
            const at::Tensor wd  = w.to(at::kDouble);
            const at::Tensor res = (wd - quant::dequantize(lq.dense).to(at::kDouble)).abs();
            const at::Tensor tol = res * kHalfRel + kHalfAbs + wd.abs() * kFloatRel;
            EXPECT_EQ(((rec.to(at::kDouble) - wd).abs().gt(tol) & sig).sum().item<int64_t>(), 0)
                << where(il, i) << ": significant weight not restored";
            EXPECT_TRUE(at::equal(rec.masked_select(~sig), s.w_hat[il][i].masked_select(~sig)))
                << where(il, i) << ": a weight that is not significant changed";
        }
}

TEST(Detach, PqiTwoRoundsCountNoOutliersAndWHat) {
    Quantized                     s;
    test::SoloTransport           t;
    const std::vector<LayerQuant> before = s.q;
    Recorded                      run;
    detach_significant(s.stage, t, s.w_orig, s.q, tokens(), 2, requant(io::SignificantSelect::Pqi),
                       pqi_opt(), run.report, recording(run));
    const auto& d = run.report["detach"];
    std::printf("detach: %s\n", d.dump().c_str());
    EXPECT_EQ(d["rounds"].get<int>(), 2);
    EXPECT_EQ(d["select"].get<std::string>(), "pqi");
    EXPECT_EQ(run.rounds_seen, (std::vector<int>{1, 2}));
    ASSERT_EQ(run.picks.size(), 2u);
    ASSERT_EQ(d["pqi"].size(), 2u);
    EXPECT_EQ(d["pqi"][0]["round"].get<int>(), 1);
    EXPECT_EQ(d["pqi"][1]["round"].get<int>(), 2);
    // F(w) is the same computation in both rounds; round 1 starts from the quantized model.
    EXPECT_EQ(d["pqi"][0]["f_orig"].get<double>(), d["pqi"][1]["f_orig"].get<double>());
    EXPECT_GT(d["pqi"][0]["delta_f"].get<double>(), 0.0) << "3-bit RTN did not raise the loss";

    // The count: r_s of every linear weight, beta per round (+-1 each from rounding).
    const int64_t N    = s.n_weights();
    const auto    want = double(std::llround(kSignificant * double(N)));
    const int64_t n1 = count(run.picks[0]), n2 = count(run.picks[1]);
    EXPECT_NEAR(double(n1), double(std::llround(kStep * double(N))), 1.0);
    EXPECT_NEAR(double(n2), double(std::llround((kSignificant - kStep) * double(N))), 1.0);
    int64_t n_sig = 0;
    for (std::size_t il = 0; il < s.q.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const at::Tensor sig = quant::csr_mask(s.q[il][i].significant);
            n_sig += s.q[il][i].significant.nnz();
            // The rounds are disjoint and together are the stored significant weights.
            EXPECT_EQ((run.picks[0][il][i] & run.picks[1][il][i]).sum().item<int64_t>(), 0)
                << where(il, i);
            EXPECT_TRUE(at::equal(sig, run.picks[0][il][i] | run.picks[1][il][i])) << where(il, i);
        }
    std::printf("significant: %lld + %lld = %lld of %lld weights (round(r_s N) = %.0f)\n",
                (long long)n1, (long long)n2, (long long)n_sig, (long long)N, want);
    EXPECT_EQ(n_sig, n1 + n2);
    EXPECT_NEAR(double(n_sig), want, 2.0);
    EXPECT_EQ(d["count"].get<double>(), double(n_sig));
    ASSERT_EQ(s.q[kOutlierLayer][kOutlierLinear].outliers.nnz(), kOutliers);
    check_result(s, before, s.q, s.stage);
}

TEST(Detach, OutliersAreNeverPicked) {
    // A control run without outliers picks P; the same start with P declared outliers in q (the
    // stage left at the dense values there, so their PQI is as large as before) picks none of P
    // and as many weights.
    const at::Tensor     tok = tokens();
    const io::JobRequant r   = requant(io::SignificantSelect::Pqi);
    test::SoloTransport  t;
    Quantized            ctl(0);
    Recorded             c;
    detach_significant(ctl.stage, t, ctl.w_orig, ctl.q, tok, 2, r, pqi_opt(), c.report,
                       recording(c));
    Quantized s(0);
    int64_t   n_p = 0;
    for (std::size_t il = 0; il < s.q.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const at::Tensor p = quant::csr_mask(ctl.q[il][i].significant);
            if (p.sum().item<int64_t>() == 0) continue;
            s.q[il][i].outliers =
                quant::csr_from_mask(s.w_orig[il][i] - quant::dequantize(s.q[il][i].dense), p);
            n_p += s.q[il][i].outliers.nnz();
        }
    ASSERT_GT(n_p, 0);
    Recorded d;
    detach_significant(s.stage, t, s.w_orig, s.q, tok, 2, r, pqi_opt(), d.report, recording(d));
    int64_t n_sig = 0, n_overlap = 0;
    for (std::size_t il = 0; il < s.q.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const at::Tensor sig = quant::csr_mask(s.q[il][i].significant);
            n_sig += s.q[il][i].significant.nnz();
            if (s.q[il][i].outliers.nnz() > 0)
                n_overlap += (sig & quant::csr_mask(s.q[il][i].outliers)).sum().item<int64_t>();
            EXPECT_TRUE(at::equal(s.stage.weights().layers[il].linear(model::kLinears[i]),
                                  quant::reconstruct(s.q[il][i])))
                << where(il, i);
        }
    std::printf("control picked %lld; with those as outliers: %lld picked, %lld of them outliers\n",
                (long long)n_p, (long long)n_sig, (long long)n_overlap);
    EXPECT_EQ(n_overlap, 0) << "outliers detached as significant";
    EXPECT_EQ(n_sig, n_p);
}

TEST(Detach, ResumedAfterRoundOneEqualsTheUninterruptedRun) {
    Quantized                     s;
    test::SoloTransport           t;
    const std::vector<LayerQuant> before = s.q;
    const at::Tensor              tok    = tokens();
    const io::JobRequant          r      = requant(io::SignificantSelect::Pqi);
    Recorded                      full;
    detach_significant(s.stage, t, s.w_orig, s.q, tok, 2, r, pqi_opt(), full.report,
                       recording(full));
    ASSERT_EQ(full.picks.size(), 2u);
    ASSERT_EQ(full.records_after_round_1.size(), 1u);

    // A fresh stage holding the same W_hat = dense + outliers and the same q.
    Quantized s2;
    set_stage_linears(s2.stage, s.w_hat);
    std::vector<LayerQuant> q2 = before;
    Recorded                resumed;
    DetachHooks             h = recording(resumed);
    h.rounds_done             = 1;
    h.picked                  = full.picks[0];
    h.rounds                  = full.records_after_round_1;
    detach_significant(s2.stage, t, s.w_orig, q2, tok, 2, r, pqi_opt(), resumed.report, h);
    EXPECT_EQ(resumed.rounds_seen, (std::vector<int>{2}));
    EXPECT_EQ(resumed.report["detach"].dump(), full.report["detach"].dump());
    int64_t n_diff = 0;
    for (std::size_t il = 0; il < q2.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const bool same = csr_equal(q2[il][i].significant, s.q[il][i].significant);
            EXPECT_TRUE(same) << where(il, i) << ": significant CSR differs after resume";
            n_diff += same ? 0 : 1;
            EXPECT_TRUE(at::equal(s2.stage.weights().layers[il].linear(model::kLinears[i]),
                                  s.stage.weights().layers[il].linear(model::kLinears[i])))
                << where(il, i);
        }
    EXPECT_EQ(n_diff, 0);
    check_result(s, before, q2, s2.stage);
}

TEST(Detach, RandomIsOneSeededRoundOfTheSameCount) {
    Quantized                     s;
    test::SoloTransport           t;
    const std::vector<LayerQuant> before = s.q;
    Recorded                      a;
    detach_significant(s.stage, t, s.w_orig, s.q, tokens(), 2,
                       requant(io::SignificantSelect::Random), pqi_opt(), a.report, recording(a));
    EXPECT_EQ(a.report["detach"]["rounds"].get<int>(), 1);
    EXPECT_EQ(a.report["detach"]["select"].get<std::string>(), "random");
    EXPECT_EQ(a.rounds_seen, (std::vector<int>{1}));
    // round(r_s numel) of each linear, outliers excluded.
    int64_t want = 0, n_sig = 0;
    for (std::size_t il = 0; il < s.q.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const int64_t n = s.q[il][i].significant.nnz();
            EXPECT_EQ(n, std::llround(kSignificant * double(s.w_orig[il][i].numel())))
                << where(il, i);
            want += std::llround(kSignificant * double(s.w_orig[il][i].numel()));
            n_sig += n;
        }
    std::printf("random significant: %lld (round(r_s N) = %lld)\n", (long long)n_sig,
                std::llround(kSignificant * double(s.n_weights())));
    EXPECT_EQ(n_sig, want);
    EXPECT_NEAR(double(n_sig), double(std::llround(kSignificant * double(s.n_weights()))),
                0.5 * double(s.q.size() * model::kNumLinears));
    EXPECT_EQ(a.report["detach"]["count"].get<double>(), double(n_sig));
    check_result(s, before, s.q, s.stage);

    // The same seed: a second run from the same start picks the same weights.
    Quantized s2;
    Recorded  b;
    detach_significant(s2.stage, t, s2.w_orig, s2.q, tokens(), 2,
                       requant(io::SignificantSelect::Random), pqi_opt(), b.report, recording(b));
    for (std::size_t il = 0; il < s.q.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            EXPECT_TRUE(csr_equal(s.q[il][i].significant, s2.q[il][i].significant)) << where(il, i);
}

// Held-out stop with a scripted held-out loss: start, then after each round.
DetachHooks scripted(Recorded& run, std::vector<double> losses, int& calls) {
    DetachHooks h  = recording(run);
    h.holdout_loss = [losses, &calls] { return losses.at(std::size_t(calls++)); };
    return h;
}
// Two PQI rounds on s with those held-out losses; returns how many were asked for.
int held_out_run(Quantized& s, Recorded& run, std::vector<double> losses) {
    test::SoloTransport t;
    int                 calls = 0;
    detach_significant(s.stage, t, s.w_orig, s.q, tokens(), 2, requant(io::SignificantSelect::Pqi),
                       pqi_opt(), run.report, scripted(run, std::move(losses), calls));
    return calls;
}

TEST(Detach, HeldOutStopUndoesTheFirstRoundThatDoesNotLowerTheHeldOutLoss) {
    Quantized                     s;
    const std::vector<LayerQuant> before = s.q;
    Recorded                      run;
    EXPECT_EQ(held_out_run(s, run, {5.0, 4.0, 4.5}), 3);
    EXPECT_EQ(run.rounds_seen, (std::vector<int>{1, 2}));
    const auto& d = run.report["detach"]["pqi"];
    ASSERT_EQ(d.size(), 2u);
    EXPECT_EQ(run.report["holdout_start"].get<double>(), 5.0);
    EXPECT_EQ(d[0]["f_holdout"].get<double>(), 4.0);
    EXPECT_TRUE(d[0]["kept"].get<bool>());
    EXPECT_EQ(d[1]["f_holdout"].get<double>(), 4.5);
    EXPECT_FALSE(d[1]["kept"].get<bool>());
    ASSERT_EQ(run.picks.size(), 2u);
    EXPECT_GT(count(run.picks[0]), 0);
    EXPECT_EQ(count(run.picks[1]), 0) << "the undone round is saved with an empty pick";
    int64_t n_sig = 0;
    for (std::size_t il = 0; il < s.q.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            n_sig += s.q[il][i].significant.nnz();
            EXPECT_TRUE(at::equal(quant::csr_mask(s.q[il][i].significant), run.picks[0][il][i]))
                << where(il, i) << ": not round 1's pick alone";
        }
    EXPECT_EQ(n_sig, count(run.picks[0]));
    EXPECT_EQ(run.report["detach"]["count"].get<double>(), double(n_sig));
    check_result(s, before, s.q, s.stage);
}

TEST(Detach, HeldOutStopCanUndoTheFirstRoundAndAResumeRunsNoMore) {
    Quantized                     s;
    const std::vector<LayerQuant> before = s.q;
    Recorded                      run;
    EXPECT_EQ(held_out_run(s, run, {5.0, 5.0}), 2) << "an equal loss is not lower";
    EXPECT_EQ(run.rounds_seen, (std::vector<int>{1}));
    for (std::size_t il = 0; il < s.q.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            EXPECT_EQ(s.q[il][i].significant.nnz(), 0) << where(il, i);
    check_result(s, before, s.q, s.stage);

    // Resumed after that round: nothing more runs, and the held-out loss is not asked again.
    test::SoloTransport t;
    Quantized           s2;
    Recorded            resumed;
    int                 calls2 = 0;
    DetachHooks         h      = scripted(resumed, {}, calls2);
    h.rounds_done              = 1;
    h.picked                   = run.picks[0];
    h.rounds                   = rounds_from_json(run.report["detach"]["pqi"]);
    detach_significant(s2.stage, t, s2.w_orig, s2.q, tokens(), 2,
                       requant(io::SignificantSelect::Pqi), pqi_opt(), resumed.report, h);
    EXPECT_EQ(calls2, 0);
    EXPECT_TRUE(resumed.rounds_seen.empty());
    EXPECT_EQ(resumed.report["detach"].dump(), run.report["detach"].dump());
}

TEST(Detach, RoundRecordsRoundTripThroughJson) {
    const std::vector<DetachRound> rounds = {{1, 0.25, 0.2, 1.5, 1.75}, {2, -1e-3, 3e-4, 2, 1.999}};
    const nlohmann::json           j      = rounds_json(rounds);
    ASSERT_EQ(j.size(), 2u);
    EXPECT_EQ(j[1]["round"].get<int>(), 2);
    const auto back = rounds_from_json(j);
    ASSERT_EQ(back.size(), rounds.size());
    for (std::size_t k = 0; k < rounds.size(); ++k) {
        EXPECT_EQ(back[k].round, rounds[k].round);
        EXPECT_EQ(back[k].delta_f, rounds[k].delta_f);
        EXPECT_EQ(back[k].pqi_sum, rounds[k].pqi_sum);
        EXPECT_EQ(back[k].f_orig, rounds[k].f_orig);
        EXPECT_EQ(back[k].f_quant, rounds[k].f_quant);
    }
    EXPECT_TRUE(rounds_from_json(nlohmann::json::array()).empty());
    EXPECT_FALSE(j[0].contains("f_holdout")) << "no held-out keys without the held-out stop";

    std::vector<DetachRound> held = rounds;
    held[0].f_holdout = 3.5, held[1].f_holdout = 3.75, held[1].kept = false;
    const auto hb = rounds_from_json(rounds_json(held));
    EXPECT_EQ(hb[0].f_holdout, 3.5);
    EXPECT_TRUE(hb[0].kept);
    EXPECT_EQ(hb[1].f_holdout, 3.75);
    EXPECT_FALSE(hb[1].kept);
}

}  // namespace
}  // namespace rq::decompose
