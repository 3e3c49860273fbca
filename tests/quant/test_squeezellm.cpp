// SqueezeLLM per-row Fisher-weighted k-means LUT quantizer (requant/quant/squeezellm.h): the
// objective never grows across Lloyd iterations and ends at the objective of dequantize(q), rows
// with few distinct values come back exactly, the Fisher weights steer the levels (and zero
// weights do not), codes and LUT shapes, storage count, errors, determinism across thread counts,
// and the weighted error against per-row RTN on the real layer 0 of llama-7m-en.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "../common/shared_dir.h"
#include "requant/error.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/weights.h"
#include "requant/quant/bitpack.h"
#include "requant/quant/rtn.h"
#include "requant/quant/squeezellm.h"

namespace rq::quant {
namespace {

// Relative slack for comparing objectives summed in double in different orders (and for the
// update step, whose weighted mean is rounded once in double before its nearest fp16 level).
constexpr double kSumSlack = 1e-12;

// float [I]: a Gaussian row with a few outliers.
at::Tensor random_row(int64_t I, at::Generator& gen) {
    at::Tensor w = at::randn({I}, gen) * 0.02;
    w.index_put_({at::randint(0, I, {I / 32 + 1}, gen, at::kLong)},
                 at::randn({I / 32 + 1}, gen) * 0.2);
    return w;
}

// double [O]: sum_i f_i (w_i - dq_i)^2 per row.
at::Tensor weighted_error(const at::Tensor& w, const at::Tensor& f, const at::Tensor& dq) {
    return ((dq.to(at::kDouble) - w.to(at::kDouble)).pow(2) * f.to(at::kDouble)).sum(-1);
}

std::string label(int bits, uint64_t seed) {
    return "bits " + std::to_string(bits) + " seed " + std::to_string(seed);
}

TEST(Squeeze, ObjectiveTraceNonIncreasing) {
    // Lloyd never raises the objective. PlusPlus adds one last entry, the fp16 rounding of its
    // fp32 centres, which may rise a little.
    for (KmeansStart start : {KmeansStart::PlusPlus, KmeansStart::Multistart}) {
        const bool   pp    = start == KmeansStart::PlusPlus;
        const size_t extra = pp ? 1 : 0;
        int64_t      n_up = 0, n_rows = 0, n_iters = 0;
        double       worst_round = 0;
        for (int bits = 2; bits <= 4; ++bits)
            for (uint64_t seed = 0; seed < 40; ++seed) {
                auto          gen = at::detail::createCPUGenerator(1000 * bits + seed);
                const int64_t I   = 64 + int64_t(seed) * 37;
                at::Tensor    w   = random_row(I, gen);
                // Fisher-like: heavy-tailed positive weights, some exact zeros (sparse part).
                at::Tensor f = at::exp(2.0 * at::randn({I}, gen)).to(at::kDouble);
                if (seed % 2) f.index_put_({at::randint(0, I, {I / 10}, gen, at::kLong)}, 0.0);
                if (seed % 5 == 0) f = at::ones({I}, at::kFloat);
                const SqueezeParams       p{bits, 50, start};
                const std::vector<double> t = squeezellm_objective_trace(w, f, p);
                ASSERT_GE(t.size(), 1u + extra);
                EXPECT_LE(t.size(), size_t(p.iters + 1) + extra) << label(bits, seed);
                for (size_t k = 1; k + extra < t.size(); ++k)
                    if (t[k] > t[k - 1] * (1 + kSumSlack)) {
                        ++n_up;
                        ADD_FAILURE() << label(bits, seed) << ": objective rose at iteration " << k
                                      << ": " << t[k - 1] << " -> " << t[k];
                    }
                if (pp) worst_round = std::max(worst_round, (t.back() - t[t.size() - 2]) / t[0]);
                // The last entry is the objective of what squeezellm_quantize returns.
                const QuantizedLinear q = squeezellm_quantize(w.unsqueeze(0), f.unsqueeze(0), p);
                const double e = weighted_error(w, f, dequantize(q).squeeze(0)).item<double>();
                EXPECT_NEAR(e, t.back(), kSumSlack * t.front()) << label(bits, seed);
                EXPECT_LT(t.back(), t.front()) << label(bits, seed) << ": Lloyd did not improve";
                const std::vector<double> t0 = squeezellm_objective_trace(w, f, {bits, 0, start});
                EXPECT_EQ(t0.size(), 1u + extra) << label(bits, seed) << ": iters 0 iterated";
                EXPECT_GE(t0[0], t.back() * (1 - kSumSlack)) << label(bits, seed);
                n_rows += 1;
                n_iters += int64_t(t.size() - extra) - 1;
            }
        std::printf(
            "trace (%s): %lld rows, mean %.1f Lloyd iterations, #rises %lld, fp16 "
            "rounding at most %.2e of the start\n",
            pp ? "kmeans++" : "multistart", (long long)n_rows, double(n_iters) / double(n_rows),
            (long long)n_up, worst_round);
        EXPECT_EQ(n_up, 0);
        EXPECT_LT(worst_round, 1e-3);
    }
}

TEST(Squeeze, FewDistinctValuesComeBackExactly) {
    for (int bits = 2; bits <= 8; ++bits)
        for (uint64_t seed = 0; seed < 4; ++seed) {
            const int64_t K = int64_t(1) << bits, I = 300;
            auto          gen = at::detail::createCPUGenerator(77 * bits + seed);
            const int64_t D   = seed == 0 ? 1 : seed == 1 ? K / 2 : K;  // distinct values
            // fp16-representable values drawn from D levels (seed 3: row 1 has zero Fisher).
            at::Tensor levels = (at::randn({D}, gen) * 0.05).to(at::kHalf).to(at::kFloat);
            at::Tensor pick   = at::randint(0, D, {4, I}, gen, at::kLong);
            pick.select(1, 0).zero_();  // fewer than D levels used is fine too
            at::Tensor w = levels.index_select(0, pick.flatten()).view({4, I});
            at::Tensor f = at::exp(at::randn({4, I}, gen));
            if (seed == 3) f[1].zero_();  // all-zero Fisher row: uniform weights
            const QuantizedLinear q = squeezellm_quantize(w, f, {bits, 50});
            EXPECT_TRUE(at::equal(dequantize(q), w)) << label(bits, seed) << " D " << D;
            // fp32 values that round to at most K fp16 values come back as their fp16 rounding.
            at::Tensor jitter = w * (1 + 1e-5 * at::rand({4, I}, gen));
            at::Tensor h      = jitter.to(at::kHalf).to(at::kFloat);
            if (std::get<0>(at::_unique(h)).size(0) <= K) {
                EXPECT_TRUE(at::equal(dequantize(squeezellm_quantize(jitter, f, {bits, 50})), h))
                    << label(bits, seed) << " jittered";
            }
            EXPECT_EQ(squeezellm_objective_trace(w[0], f[0], {bits, 50}), std::vector<double>{0.0});
        }
}

TEST(Squeeze, HeavyFisherWeightIsReconstructedBetter) {
    // One weight in the tail, fp16-representable, with Fisher 1e6 against 1 elsewhere: a level
    // is pulled exactly onto it. With uniform weights its level is some cluster's mean, which
    // only by chance lands on it.
    int n_trials = 0, n_better = 0;
    for (int bits = 2; bits <= 4; ++bits)
        for (uint64_t seed = 0; seed < 8; ++seed) {
            auto          gen = at::detail::createCPUGenerator(500 + 10 * bits + seed);
            const int64_t I = 256, col = 7 + int64_t(seed);
            at::Tensor    w       = at::randn({1, I}, gen) * 0.02;
            w[0][col]             = float(at::Half(0.02f * (1.7f + 0.1f * float(seed))));
            at::Tensor f          = at::ones({1, I}, at::kDouble);
            const auto err_at_col = [&] {
                const at::Tensor d = dequantize(squeezellm_quantize(w, f, {bits, 50}));
                return (d[0][col] - w[0][col]).abs().item<double>();
            };
            const double eu = err_at_col();
            f[0][col]       = 1e6;
            const double ew = err_at_col();
            EXPECT_EQ(ew, 0.0) << label(bits, seed);
            EXPECT_LE(ew, eu) << label(bits, seed);
            n_trials += 1;
            n_better += ew < eu;
        }
    EXPECT_GE(n_better, n_trials - 2) << "the heavy weight rarely mattered";
}

TEST(Squeeze, ZeroFisherPositionsDoNotMoveTheLevels) {
    for (int bits = 2; bits <= 4; ++bits)
        for (uint64_t seed = 0; seed < 10; ++seed) {
            auto          gen = at::detail::createCPUGenerator(900 + 10 * bits + seed);
            const int64_t I   = 300;
            at::Tensor    w   = random_row(I, gen);
            at::Tensor    f   = at::exp(2.0 * at::randn({I}, gen));
            at::Tensor    off = at::rand({I}, gen) < 0.1;  // the sparse part
            f.masked_fill_(off, 0.0);
            // Multistart: the levels do not depend on the zero-weight weights at all.
            // PlusPlus: its start does not (the row variance behind sklearn's tol does).
            const SqueezeParams pp{bits, 50};
            at::Tensor          moved = at::where(off, at::randn({I}, gen) * 3.0, w);
            EXPECT_TRUE(at::equal(squeezellm_starts(w.unsqueeze(0), f.unsqueeze(0), pp),
                                  squeezellm_starts(moved.unsqueeze(0), f.unsqueeze(0), pp)))
                << label(bits, seed);
            const SqueezeParams   p{bits, 50, KmeansStart::Multistart};
            const QuantizedLinear a = squeezellm_quantize(w.unsqueeze(0), f.unsqueeze(0), p);
            // Move the zero-weight weights anywhere (outliers included): same levels.
            const QuantizedLinear b = squeezellm_quantize(moved.unsqueeze(0), f.unsqueeze(0), p);
            EXPECT_TRUE(at::equal(a.lut, b.lut)) << label(bits, seed);
            // Dropping them altogether: same levels, same trace.
            at::Tensor keep = (~off).nonzero().squeeze(1);
            at::Tensor wk = w.index_select(0, keep), fk = f.index_select(0, keep);
            EXPECT_TRUE(
                at::equal(a.lut, squeezellm_quantize(wk.unsqueeze(0), fk.unsqueeze(0), p).lut))
                << label(bits, seed);
            EXPECT_EQ(squeezellm_objective_trace(w, f, p), squeezellm_objective_trace(wk, fk, p))
                << label(bits, seed);
            // The zero-weight positions still get their nearest level.
            const at::Tensor lut  = b.lut.to(at::kFloat)[0];
            const at::Tensor dmin = (moved.unsqueeze(1) - lut.unsqueeze(0)).abs().amin(1);
            const at::Tensor got  = (moved - dequantize(b)[0]).abs();
            EXPECT_TRUE(at::equal(got, dmin)) << label(bits, seed);
        }
}

TEST(Squeeze, CodesLutShapesAndNearestLevels) {
    auto       gen = at::detail::createCPUGenerator(3);
    at::Tensor w   = at::randn({24, 172}, gen) * 0.03;
    at::Tensor f   = at::rand({24, 172}, gen, at::kDouble);
    for (int bits = 2; bits <= 8; ++bits) {
        const int64_t         K = int64_t(1) << bits;
        const QuantizedLinear q = squeezellm_quantize(w, f, {bits, 50});
        EXPECT_EQ(q.bits, bits);
        EXPECT_EQ(q.group_size, 0);
        EXPECT_TRUE(q.is_lut());
        EXPECT_FALSE(q.scales.defined());
        EXPECT_FALSE(q.zeros.defined());
        EXPECT_EQ(q.lut.sizes(), (std::vector<int64_t>{24, K}));
        EXPECT_EQ(q.lut.scalar_type(), at::kHalf);
        EXPECT_EQ(q.codes.sizes(), (std::vector<int64_t>{24, 172}));
        EXPECT_EQ(q.codes.scalar_type(), at::kByte);
        EXPECT_LT(q.codes.max().item<int64_t>(), K) << "bits " << bits;
        const at::Tensor lut = q.lut.to(at::kFloat);
        EXPECT_TRUE(at::equal(lut, std::get<0>(lut.sort(1)))) << "levels not ascending";
        // Every weight sits on its nearest level (distances exact in double).
        const at::Tensor d =
            (w.to(at::kDouble).unsqueeze(2) - lut.to(at::kDouble).unsqueeze(1)).abs();
        const at::Tensor got = (w.to(at::kDouble) - dequantize(q).to(at::kDouble)).abs();
        EXPECT_EQ(got.ne(d.amin(2)).sum().item<int64_t>(), 0) << "bits " << bits;
        // Quantizing the dequantized weights again changes nothing (<= K fp16 values per row).
        EXPECT_TRUE(
            at::equal(dequantize(squeezellm_quantize(dequantize(q), f, {bits, 50})), dequantize(q)))
            << "bits " << bits;
        if (bits <= 4) {  // 172 weights, at most 16 levels: all of them in use
            EXPECT_EQ(std::get<0>(at::_unique(lut[0])).size(0), K) << "bits " << bits;
        }
    }
}

TEST(Squeeze, DenseStorageBitsCountTheLut) {
    auto             gen = at::detail::createCPUGenerator(8);
    const at::Tensor w = at::randn({4, 688}, gen), f = at::ones({4, 688});
    for (int bits : {2, 3, 4, 8}) {  // fp16 LUT of 2^bits levels per row + packed code rows
        const QuantizedLinear q = squeezellm_quantize(w, f, {bits, 10});
        EXPECT_EQ(dense_storage_bits(q),
                  4 * (int64_t(1) << bits) * 16 + 4 * packed_words(688, bits) * 32)
            << "bits " << bits;
    }
    EXPECT_EQ(dense_storage_bits(squeezellm_quantize(w, f, {3, 10})), 4 * 8 * 16 + 4 * 65 * 32);
}

TEST(Squeeze, BadInputsThrow) {
    const at::Tensor w = at::randn({2, 64}), f = at::ones({2, 64});
    for (int bits : {1, 9, 0, -1}) {
        EXPECT_THROW(squeezellm_quantize(w, f, {bits, 50}), ConfigError) << bits;
        EXPECT_THROW(squeezellm_objective_trace(w[0], f[0], {bits, 50}), ConfigError) << bits;
    }
    EXPECT_THROW(squeezellm_quantize(w, f, {4, -1}), ConfigError);
    EXPECT_THROW(squeezellm_quantize(w, at::ones({2, 63}), {}), ShapeError);
    EXPECT_THROW(squeezellm_quantize(w, at::ones({64, 2}), {}), ShapeError);
    EXPECT_THROW(squeezellm_quantize(w[0], f[0], {}), ShapeError);
    EXPECT_THROW(squeezellm_quantize(w, at::ones({2, 64}, at::kInt), {}), ShapeError);
    EXPECT_THROW(squeezellm_quantize(at::ones({2, 0}), at::ones({2, 0}), {}), ShapeError);
    EXPECT_THROW(squeezellm_objective_trace(w, f, {}), ShapeError);
    EXPECT_THROW(squeezellm_objective_trace(w[0], f[1].narrow(0, 0, 63), {}), ShapeError);
    at::Tensor neg = f.clone();
    neg[1][5]      = -1e-9;
    try {
        squeezellm_quantize(w, neg, {});
        ADD_FAILURE() << "negative fisher accepted";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("row 1, col 5"), std::string::npos) << e.what();
    }
    at::Tensor nan = f.clone();
    nan[0][3]      = NAN;
    EXPECT_THROW(squeezellm_quantize(w, nan, {}), ConfigError);
    at::Tensor winf = w.clone();
    winf[0][0]      = INFINITY;
    EXPECT_THROW(squeezellm_quantize(winf, f, {}), ConfigError);
    EXPECT_NO_THROW(squeezellm_quantize(w, f.to(at::kDouble), {2, 0}));
    EXPECT_NO_THROW(squeezellm_quantize(w, f, {8, 1}));
}

TEST(Squeeze, DeterministicForAnyThreadCount) {
    auto       gen = at::detail::createCPUGenerator(12);
    at::Tensor w   = at::randn({96, 688}, gen) * 0.02;
    at::Tensor f   = at::exp(2.0 * at::randn({96, 688}, gen));
    const int  nt  = at::get_num_threads();
    for (int bits : {2, 3, 4, 8}) {
        const QuantizedLinear a = squeezellm_quantize(w, f, {bits, 50});
        const QuantizedLinear b = squeezellm_quantize(w, f, {bits, 50});
        at::set_num_threads(1);
        const QuantizedLinear c = squeezellm_quantize(w, f, {bits, 50});
        at::set_num_threads(2);
        const QuantizedLinear d = squeezellm_quantize(w, f, {bits, 50});
        at::set_num_threads(nt);
        for (const QuantizedLinear* x : {&b, &c, &d}) {
            EXPECT_TRUE(at::equal(a.codes, x->codes)) << "bits " << bits;
            EXPECT_TRUE(at::equal(a.lut.view(at::kShort), x->lut.view(at::kShort)))
                << "bits " << bits;
        }
    }
}

TEST(Squeeze, BeatsPerRowRtnOnRealLayerLlama7m) {
    io::HfCheckpoint    ckpt(test::shared_path("models/llama-7m-en"));
    model::StageWeights sw = model::load_stage_weights(ckpt, {0, 1, true, false}, at::kFloat);
    ASSERT_EQ(sw.layers.size(), 1u);
    int64_t n_worse = 0;
    std::printf("# linear     bits  weights    sq/rtn weighted error  #rows worse\n");
    for (model::Linear l : model::kLinears) {
        const at::Tensor& w       = sw.layers[0].linear(l);
        auto              gen     = at::detail::createCPUGenerator(int(l) + 1);
        const at::Tensor  uniform = at::ones(w.sizes(), at::kDouble);
        const at::Tensor  random  = at::exp(2.0 * at::randn(w.sizes(), gen, at::kDouble));
        for (int bits = 2; bits <= 4; ++bits)
            for (const at::Tensor* f : {&uniform, &random}) {
                const at::Tensor es =
                    weighted_error(w, *f, dequantize(squeezellm_quantize(w, *f, {bits, 50})));
                const at::Tensor er = weighted_error(w, *f, dequantize(rtn_quantize(w, {bits, 0})));
                const int64_t    nw = (es > er).sum().item<int64_t>();
                std::printf("  %-9s  %4d  %-7s  %21.4f  %11lld\n", model::linear_name(l), bits,
                            f == &uniform ? "uniform" : "random",
                            es.sum().item<double>() / er.sum().item<double>(), (long long)nw);
                EXPECT_EQ(nw, 0) << model::linear_name(l) << " bits " << bits;
                n_worse += nw;
            }
    }
    EXPECT_EQ(n_worse, 0) << "rows where k-means is worse than per-row RTN";
}

}  // namespace
}  // namespace rq::quant
