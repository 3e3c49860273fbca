// The quantizer registry (requant/quant/quantizer.h), table-driven: every registered method
// quantizes a group of linears sharing one input to the right shapes, equals its `_ref` twin
// where it has one, is scored 0 by its own objective at W_hat = W, and at its own result scores
// no worse than round-to-nearest with the same levels per row or group (what each method is
// built to improve on). Also: every QuantMethod has exactly one row, and a method whose
// statistics are missing says so.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstdio>

#include "requant/error.h"
#include "requant/quant/quantizer.h"

namespace rq::quant {
namespace {

constexpr int64_t kIn = 96, kSamples = 256;

// Two linears reading one input, with the input's statistics and Fisher diagonals: weights
// with a few large entries, inputs with a few loud channels (what AWQ's scales are for).
InputGroup make_group(uint64_t seed) {
    auto       gen = at::detail::createCPUGenerator(seed);
    InputGroup g;
    for (int64_t o : {48, 32}) {
        at::Tensor w = at::randn({o, kIn}, gen) * 0.02;
        w.index_put_(
            {at::randint(0, o, {8}, gen, at::kLong), at::randint(0, kIn, {8}, gen, at::kLong)},
            at::randn({8}, gen) * 0.2);
        g.w.push_back(w);
        g.fisher.push_back(at::randn({o, kIn}, gen).square() + 1e-3);
        g.clip.push_back(true);
    }
    at::Tensor x = at::randn({kSamples, kIn}, gen);
    x.narrow(1, 0, 4).mul_(20.0);  // loud channels
    g.in.samples  = x;
    g.in.abs_mean = x.abs().mean(0);
    g.in.xtx      = x.t().matmul(x).to(at::kDouble);
    return g;
}

io::JobQuant params(io::QuantMethod m, int64_t group_size) {
    io::JobQuant p;
    p.method       = m;
    p.bits         = 3;
    p.group_size   = int(group_size);
    p.kmeans_iters = 30;
    return p;
}

double group_objective(const Quantizer& q, const InputGroup& g, const std::vector<DenseFit>& d) {
    double s = 0;
    for (std::size_t k = 0; k < g.w.size(); ++k)
        s += q.objective(g.w[k], dequantize(d[k].q), g.in, g.fisher[k]);
    return s;
}

class Registered : public ::testing::TestWithParam<io::QuantMethod> {};

TEST_P(Registered, ShapesRefTwinAndObjective) {
    const Quantizer& q = quantizer(GetParam());
    EXPECT_EQ(q.method, GetParam());
    const InputGroup g = make_group(7);
    // SqueezeLLM fits one LUT per row: RTN with one group per row has as many levels.
    // QTIP has no groups; RTN per group of 32 has more levels per row than it.
    const int64_t         G = GetParam() == io::QuantMethod::SqueezeLlm ? 0 : 32;
    const io::JobQuant    p = params(GetParam(), G);
    std::vector<DenseFit> d = q.quantize(g, p);
    ASSERT_EQ(d.size(), g.w.size());
    for (std::size_t k = 0; k < d.size(); ++k) {
        EXPECT_EQ(d[k].q.bits, 3);
        EXPECT_FALSE(d[k].kept.defined());  // no sparse weights
        EXPECT_EQ(dequantize(d[k].q).sizes(), g.w[k].sizes());
        EXPECT_EQ(q.objective(g.w[k], g.w[k], g.in, g.fisher[k]), 0.0) << io::name(GetParam());
        EXPECT_GT(q.objective(g.w[k], dequantize(d[k].q), g.in, g.fisher[k]), 0.0);
    }
    if (q.quantize_ref != nullptr) {
        const auto r = q.quantize_ref(g, p);
        for (std::size_t k = 0; k < d.size(); ++k) {
            EXPECT_TRUE(at::equal(d[k].q.codes, r[k].q.codes)) << io::name(GetParam());
            EXPECT_TRUE(at::equal(dequantize(d[k].q), dequantize(r[k].q)));
        }
    }
    const auto   rtn = quantizer(io::QuantMethod::Rtn).quantize(g, params(io::QuantMethod::Rtn, G));
    const double mine = group_objective(q, g, d), base = group_objective(q, g, rtn);
    std::printf("%-10s objective %s: %.6e (RTN %.6e)\n", io::name(GetParam()), q.objective_text,
                mine, base);
    EXPECT_LE(mine, base * (1 + 1e-9)) << io::name(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Methods, Registered,
                         ::testing::Values(io::QuantMethod::Rtn, io::QuantMethod::Gptq,
                                           io::QuantMethod::Awq, io::QuantMethod::SqueezeLlm,
                                           io::QuantMethod::Qtip),
                         [](const auto& info) { return std::string(io::name(info.param)); });

TEST(Registry, OneRowPerMethodInEnumOrder) {
    const auto& all = quantizers();
    ASSERT_EQ(all.size(), 5u);
    for (std::size_t i = 0; i < all.size(); ++i) {
        EXPECT_EQ(int(all[i].method), int(i));
        EXPECT_NE(all[i].quantize, nullptr);
        EXPECT_NE(all[i].objective, nullptr);
    }
    EXPECT_TRUE(quantizer(io::QuantMethod::Gptq).needs.xtx);
    EXPECT_TRUE(quantizer(io::QuantMethod::Qtip).needs.xtx);
    EXPECT_TRUE(quantizer(io::QuantMethod::Awq).needs.samples);
    EXPECT_TRUE(quantizer(io::QuantMethod::SqueezeLlm).needs.fisher);
    EXPECT_FALSE(quantizer(io::QuantMethod::Rtn).needs.forward());
}

TEST(Registry, MissingStatisticsAreAnInternalError) {
    InputGroup g = make_group(3);
    g.in         = {};
    g.fisher.clear();
    for (io::QuantMethod m : {io::QuantMethod::Gptq, io::QuantMethod::Awq,
                              io::QuantMethod::SqueezeLlm, io::QuantMethod::Qtip})
        EXPECT_THROW(quantizer(m).quantize(g, params(m, 32)), InternalError) << io::name(m);
}

}  // namespace
}  // namespace rq::quant
