// The fused kernels of the decoder block (RMSNorm, SwiGLU, RoPE; attention's finite
// differences) against their plain twins:
// forward and gradients equal to 1e-5 relative in fp32 and to fp64 rounding in fp64, gradients
// against central differences in fp64, and the same bits on one thread and on two.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <functional>
#include <vector>

#include "requant/error.h"
#include "requant/model/attention.h"
#include "requant/model/block_ops.h"
#include "requant/model/rope.h"
#include "requant/model/tensor_cache.h"
#include "requant/model/vec_math.h"
#include "tiny_model.h"

namespace rq::model {
namespace {

using Fn = std::function<at::Tensor(const std::vector<at::Tensor>&)>;

at::Tensor randn(at::IntArrayRef shape, uint64_t seed, at::ScalarType dt = at::kDouble) {
    at::Generator g = at::detail::createCPUGenerator(seed);
    return at::randn(shape, g, at::TensorOptions().dtype(dt));
}

double max_rel(const at::Tensor& a, const at::Tensor& b) {
    return ((a - b).abs().max() / b.abs().max()).item<double>();
}

// Output and input gradients of sum(f(xs) * w) for a fixed random w.
std::vector<at::Tensor> grads(const Fn& f, const std::vector<at::Tensor>& xs0) {
    std::vector<at::Tensor> xs;
    for (const auto& x : xs0) xs.push_back(x.detach().clone().requires_grad_(true));
    at::Tensor y = f(xs);
    (y * randn(y.sizes(), 99, y.scalar_type())).sum().backward();
    std::vector<at::Tensor> out{y.detach()};
    for (auto& x : xs) out.push_back(x.grad());
    return out;
}

void expect_twins(const Fn& fused, const Fn& ref, const std::vector<at::Tensor>& xs,
                  const char* what) {
    const double tol = xs[0].scalar_type() == at::kFloat ? 1e-5 : 1e-13;
    const auto   a = grads(fused, xs), b = grads(ref, xs);
    for (std::size_t i = 0; i < a.size(); ++i) {
        ASSERT_TRUE(a[i].defined() && b[i].defined()) << what << " output " << i;
        EXPECT_EQ(a[i].sizes(), b[i].sizes()) << what << " output " << i;
        EXPECT_LT(max_rel(a[i], b[i]), tol) << what << (i ? " gradient " : " forward ") << i;
    }
}

// Central differences of sum(f(xs) * w) in every element of every input (fp64).
void expect_gradcheck(const Fn& f, std::vector<at::Tensor> xs, const char* what) {
    const auto       g   = grads(f, xs);
    const at::Tensor w   = randn(g[0].sizes(), 99);
    const double     eps = 1e-6;
    const auto       F   = [&] { return (f(xs) * w).sum().item<double>(); };
    for (std::size_t k = 0; k < xs.size(); ++k) {
        at::Tensor flat = xs[k].view({-1}), gk = g[k + 1].reshape({-1});
        for (int64_t i = 0; i < flat.numel(); ++i) {
            const double x0 = flat[i].item<double>();
            flat[i].fill_(x0 + eps);
            const double fp = F();
            flat[i].fill_(x0 - eps);
            const double fm = F();
            flat[i].fill_(x0);
            EXPECT_NEAR(gk[i].item<double>(), (fp - fm) / (2 * eps), 1e-8)
                << what << " input " << k << " element " << i;
        }
    }
}

// Hessian-vector products through f (double backward, as sensitivity's exact second-order term
// takes them): the fused kernels' backward goes through their twins then, so the two agree.
void expect_double_backward(const Fn& fused, const Fn& twin, const std::vector<at::Tensor>& xs0,
                            const char* what) {
    const auto hvp = [&](const Fn& f) {
        std::vector<at::Tensor> xs;
        for (const auto& x : xs0) xs.push_back(x.detach().clone().requires_grad_(true));
        const at::Tensor y  = f(xs);
        const auto       g  = torch::autograd::grad({(y * randn(y.sizes(), 41)).sum()}, xs, {},
                                                    /*retain_graph=*/true, /*create_graph=*/true);
        at::Tensor       gv = at::zeros({}, at::kDouble);
        for (std::size_t i = 0; i < g.size(); ++i)
            gv = gv + (g[i] * randn(g[i].sizes(), 42 + i)).sum();
        return torch::autograd::grad({gv}, xs, {}, true, false, /*allow_unused=*/true);
    };
    const auto a = hvp(fused), b = hvp(twin);
    for (std::size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(a[i].defined(), b[i].defined()) << what << " input " << i;
        if (a[i].defined()) {
            EXPECT_LT(max_rel(a[i], b[i]), 1e-12) << what << " input " << i;
        }
    }
}

const Fn kNorm    = [](const auto& x) { return rms_norm(x[0], x[1], 1e-5); };
const Fn kNormRef = [](const auto& x) { return rms_norm_ref(x[0], x[1], 1e-5); };
const Fn kGlu     = [](const auto& x) { return swiglu(x[0], x[1]); };
const Fn kGluRef  = [](const auto& x) { return swiglu_ref(x[0], x[1]); };

TEST(FusedRmsNorm, MatchesItsTwinAndFiniteDifferences) {
    for (auto dt : {at::kFloat, at::kDouble})  // 600 rows: three chunks of the weight gradient
        expect_twins(kNorm, kNormRef, {randn({3, 200, 24}, 1, dt), randn({24}, 2, dt)}, "rms_norm");
    expect_gradcheck(kNorm, {randn({2, 3, 5}, 3), randn({5}, 4)}, "rms_norm");
    at::Tensor x = randn({2, 4}, 5), w = randn({3}, 6);
    EXPECT_THROW(rms_norm(x, w, 1e-5), ShapeError);
}

TEST(FusedRmsNorm, SameBitsOnOneAndTwoThreads) {
    const at::Tensor x = randn({700, 32}, 7, at::kFloat), w = randn({32}, 8, at::kFloat);
    const int        before = at::get_num_threads();
    at::set_num_threads(1);
    const auto one = grads(kNorm, {x, w});
    at::set_num_threads(2);
    const auto two = grads(kNorm, {x, w});
    at::set_num_threads(before);
    for (std::size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(at::equal(one[i], two[i])) << i;
}

TEST(FusedSwiglu, MatchesItsTwinAndFiniteDifferences) {
    for (auto dt : {at::kFloat, at::kDouble})
        expect_twins(kGlu, kGluRef, {randn({4, 9, 40}, 9, dt) * 3, randn({4, 9, 40}, 10, dt)},
                     "swiglu");
    expect_gradcheck(kGlu, {randn({3, 7}, 11) * 3, randn({3, 7}, 12)}, "swiglu");
}

TEST(FusedRope, MatchesItsTwinAndFiniteDifferences) {
    const auto c = test::tiny_config(false);
    for (auto dt : {at::kFloat, at::kDouble}) {
        const RopeTables rt = rope_tables(c, 16, dt);
        const int64_t    B = 2, T = 11, nh = 3, D = c.head_dim;
        const Fn         rope = [&](const auto& x) { return apply_rope(x[0].transpose(1, 2), rt); };
        const Fn ref = [&](const auto& x) { return apply_rope_ref(x[0].transpose(1, 2), rt); };
        // As the model calls it: a linear's output [B, T, nh, D] seen as [B, nh, T, D].
        expect_twins(rope, ref, {randn({B, T, nh, D}, 13, dt)}, "rope (transposed input)");
        const Fn plain = [&](const auto& x) { return apply_rope(x[0], rt); };
        const Fn pref  = [&](const auto& x) { return apply_rope_ref(x[0], rt); };
        expect_twins(plain, pref, {randn({B, nh, T, D}, 14, dt)}, "rope (contiguous input)");
        if (dt == at::kDouble) expect_gradcheck(rope, {randn({1, 5, 2, D}, 15)}, "rope");
    }
}

TEST(BlockedAttention, GradientsMatchFiniteDifferences) {
    // Blocks of 4 of 6 positions, R = 2 query heads per key/value head.
    const Fn attn = [](const auto& x) { return causal_attention(x[0], x[1], x[2], 4); };
    expect_gradcheck(attn, {randn({1, 4, 6, 3}, 7), randn({1, 2, 6, 3}, 8), randn({1, 2, 6, 3}, 9)},
                     "attention");
}

TEST(FusedKernels, DoubleBackwardGoesThroughTheTwins) {
    const auto       c  = test::tiny_config(false);
    const RopeTables rt = rope_tables(c, 16, at::kDouble);
    expect_double_backward(kNorm, kNormRef, {randn({2, 3, 5}, 51), randn({5}, 52)}, "rms_norm");
    expect_double_backward(kGlu, kGluRef, {randn({3, 7}, 53), randn({3, 7}, 54)}, "swiglu");
    // RoPE is linear: its second derivative is 0, but the gradient must stay a function of the
    // incoming gradient (feed it through a square so the HVP is not trivially 0).
    const Fn rope  = [&](const auto& x) { return apply_rope(x[0], rt).pow(2); };
    const Fn ropeR = [&](const auto& x) { return apply_rope_ref(x[0], rt).pow(2); };
    expect_double_backward(rope, ropeR, {randn({1, 2, 5, c.head_dim}, 55)}, "rope");
    const Fn attn  = [](const auto& x) { return causal_attention(x[0], x[1], x[2], 2); };
    const Fn attnR = [](const auto& x) { return causal_attention_ref(x[0], x[1], x[2]); };
    expect_double_backward(
        attn, attnR, {randn({1, 4, 5, 3}, 56), randn({1, 2, 5, 3}, 57), randn({1, 2, 5, 3}, 58)},
        "attention");
}

TEST(VecMath, ExpAndLaneSumsMatchTheirPlainTwins) {
    // exp_vec against libm over the whole clamped range, within 3 ulp (about 3.6e-7 relative).
    double worst = 0;
    for (int64_t i = 0; i <= 1000000; ++i) {
        const float  x = -87.0f + 175.0f * float(i) / 1e6f;
        const double e = std::exp(double(x));
        worst          = std::max(worst, std::abs(double(exp_vec(x)) - e) / e);
    }
    EXPECT_LT(worst, 3.6e-7);
    EXPECT_GT(exp_vec(-1e30f), 0.0f);  // clamped, never NaN or negative
    EXPECT_LT(exp_vec(-1e30f), 2e-38f);
    EXPECT_TRUE(std::isfinite(exp_vec(1e30f)));
    // lane_sum / lane_max against a plain loop, for lengths around the lane count.
    for (int64_t n : {1, 7, 8, 9, 100, 1001}) {
        const at::Tensor x     = randn({n}, 30 + uint64_t(n));
        const double*    xp    = x.data_ptr<double>();
        double           plain = 0, mx = xp[0];
        for (int64_t i = 0; i < n; ++i) plain += xp[i], mx = std::max(mx, xp[i]);
        EXPECT_NEAR(lane_sum<double>(n, [&](int64_t i) { return xp[i]; }), plain, 1e-12) << n;
        EXPECT_EQ(lane_max(xp, n), mx) << n;
    }
}

TEST(TensorCache, ReusesFreedBlocksAndKeepsToItsCap) {
    install_tensor_cache(int64_t(64) << 20);
    const auto before = tensor_cache_stats();
    for (int i = 0; i < 5; ++i) at::empty({int64_t(3) << 18}).fill_(1.0f);  // 3 MiB, freed
    const auto after = tensor_cache_stats();
    EXPECT_GE(after.hits - before.hits, 4);  // the first may miss, the rest are the same block
    {
        const at::Tensor a = at::ones({int64_t(5) << 18}), b = at::ones({int64_t(5) << 18});
        EXPECT_NE(a.data_ptr(), b.data_ptr());  // a cached block serves one tensor at a time
        EXPECT_EQ((a + b).sum().item<float>(), float(2 * (5 << 18)));
    }
    install_tensor_cache(int64_t(4) << 20);  // lower the cap: the 5 MiB blocks go back
    EXPECT_LE(tensor_cache_stats().cached_bytes, int64_t(4) << 20);
    EXPECT_GT(tensor_cache_stats().evicted_bytes, before.evicted_bytes);
    const auto small = tensor_cache_stats();
    { const at::Tensor t = at::ones({1000}); }  // below kMinCachedBytes: not the cache's
    EXPECT_EQ(tensor_cache_stats().hits + tensor_cache_stats().misses, small.hits + small.misses);
    install_tensor_cache(kDefaultTensorCacheBytes);
}

}  // namespace
}  // namespace rq::model
