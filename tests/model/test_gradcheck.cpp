// Autograd gradients of F (mean next-token loss) against central finite differences, in fp64 on
// a tiny random model: every linear of every layer, plus the boundary gradient of a stage input.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "requant/model/llama.h"
#include "tiny_model.h"

namespace rq::model {
namespace {

constexpr double kEps =
    1e-6;  // central-difference step (fp64: truncation ~eps², rounding ~1e-10/eps)
constexpr double kRelTol = 1e-6;
constexpr double kAbsTol = 1e-9;

double loss_of(const Stage& s, const at::Tensor& in, const at::Tensor& tok) {
    at::NoGradGuard g;
    return s.forward(in, tok).mean().item<double>();
}

void check_close(double fd, double ad, const std::string& what) {
    EXPECT_NEAR(ad, fd, kAbsTol + kRelTol * std::abs(fd)) << what;
}

class GradCheck : public ::testing::TestWithParam<bool> {};

TEST_P(GradCheck, LinearWeightsMatchFiniteDifferences) {
    const auto c = test::tiny_config(GetParam());
    Stage      s(c, random_stage_weights(c, whole_model(c), at::kDouble, 7), 16);
    at::Tensor tok = test::tiny_tokens(c, 2, 11, 3);
    enable_linear_grads(s.weights());
    at::Tensor out = s.forward(tok, tok);
    stage_backward(tok, out, at::scalar_tensor(1.0 / out.numel(), at::kDouble));

    at::Generator gen     = at::detail::createCPUGenerator(11);
    int           checked = 0;
    for (std::size_t il = 0; il < s.weights().layers.size(); ++il)
        for (Linear l : kLinears) {
            at::Tensor& w    = s.weights().layers[il].linear(l);
            at::Tensor  grad = w.grad().clone();
            ASSERT_TRUE(grad.defined());
            at::Tensor idx = at::randint(0, w.numel(), {4}, gen, at::kLong);
            for (int64_t k = 0; k < 4; ++k) {
                const int64_t i = idx[k].item<int64_t>();
                at::Tensor    flat;
                {
                    at::NoGradGuard g;
                    flat = w.view({-1});
                }
                const double w0 = flat[i].item<double>();
                {
                    at::NoGradGuard g;
                    flat[i].fill_(w0 + kEps);
                }
                const double fp = loss_of(s, tok, tok);
                {
                    at::NoGradGuard g;
                    flat[i].fill_(w0 - kEps);
                }
                const double fm = loss_of(s, tok, tok);
                {
                    at::NoGradGuard g;
                    flat[i].fill_(w0);
                }
                check_close((fp - fm) / (2 * kEps), grad.view({-1})[i].item<double>(),
                            "layer " + std::to_string(il) + " " + linear_name(l) + "[" +
                                std::to_string(i) + "]");
                ++checked;
            }
        }
    EXPECT_EQ(checked, 3 * 7 * 4);
}

// dF/d(input activations) of a middle stage: what a pipeline sends to the previous rank.
TEST_P(GradCheck, BoundaryGradientMatchesFiniteDifferences) {
    const auto c = test::tiny_config(GetParam());
    Stage      head(c, random_stage_weights(c, {0, 1, true, false}, at::kDouble, 7), 16);
    Stage      tail(c, random_stage_weights(c, {1, 3, false, true}, at::kDouble, 7), 16);
    at::Tensor tok = test::tiny_tokens(c, 2, 9, 5);
    at::Tensor x;
    {
        at::NoGradGuard g;
        x = head.forward(tok, tok);
    }
    x.set_requires_grad(true);
    at::Tensor out = tail.forward(x, tok);
    at::Tensor gx  = stage_backward(x, out, at::scalar_tensor(1.0 / out.numel(), at::kDouble));
    ASSERT_TRUE(gx.defined());
    ASSERT_EQ(gx.sizes(), x.sizes());
    at::Tensor xd = x.detach().clone();
    for (int64_t i : {0L, 17L, 100L, xd.numel() - 1}) {
        at::Tensor   f  = xd.view({-1});
        const double x0 = f[i].item<double>();
        f[i].fill_(x0 + kEps);
        const double fp = loss_of(tail, xd, tok);
        f[i].fill_(x0 - kEps);
        const double fm = loss_of(tail, xd, tok);
        f[i].fill_(x0);
        check_close((fp - fm) / (2 * kEps), gx.view({-1})[i].item<double>(),
                    "input[" + std::to_string(i) + "]");
    }
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, GradCheck, ::testing::Values(true, false));

}  // namespace
}  // namespace rq::model
